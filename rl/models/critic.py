"""Value critic V(s): the policy's kind of backbone with a scalar head on the last token.

Stored as a HF token-classification model with one label, so it saves and loads
with save_pretrained/from_pretrained like any checkpoint; the score of a state is
sigmoid(logit) at its last token, read as the probability that it leads to a right answer.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

from rl.models.device import pick_device
from rl.models.weights import Weights, load_numpy, to_numpy


def load_value_model(path: str | Path):
    """A scalar-head model from a critic folder, or from a policy folder (new head).

    No dropout before the head (transformers defaults to 0.1 there): the head reads a probability,
    and dropout noise in training both blurs its calibration and makes a run depend on how batches
    are split over ranks.
    """
    config = AutoConfig.from_pretrained(str(path), num_labels=1)
    config.classifier_dropout = 0.0
    return AutoModelForTokenClassification.from_pretrained(str(path), config=config, dtype=torch.float32)


def last_token_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B] logit at each row's last real token; rows are right-padded."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[..., 0]  # [B, T]
    last = attention_mask.sum(1) - 1                                                     # [B]
    return logits.gather(1, last.unsqueeze(1)).squeeze(1)


class ValueCritic:
    def __init__(self, model, tokenizer, device: torch.device, version: int = 0, batch_size: int = 64):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.version = version
        self.batch_size = batch_size
        self.calls = 0  # states scored so far
        self._lock = threading.Lock()  # threaded searches share this critic; HF fast tokenizers are not thread-safe

    @classmethod
    def from_pretrained(cls, path: str | Path, tokenizer_path: str | Path | None = None,
                        device: str = "auto") -> "ValueCritic":
        tok = AutoTokenizer.from_pretrained(str(tokenizer_path or path))
        tok.padding_side = "right"  # the score is read at the last real token
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        return cls(load_value_model(path), tok, pick_device(device))

    @torch.no_grad()
    def score(self, states: list[str]) -> np.ndarray:
        """[len(states)] values in (0, 1)."""
        with self._lock:
            return self._score(states)

    def _score(self, states: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(states), self.batch_size):
            enc = self.tokenizer(states[i:i + self.batch_size], return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(self.device)
            out.append(torch.sigmoid(last_token_logits(self.model, enc["input_ids"], enc["attention_mask"])).cpu())
        self.calls += len(states)
        return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)

    def load_weights(self, version: int, weights: Weights) -> None:
        load_numpy(self.model, weights)
        self.version = version

    def weights(self) -> Weights:
        return to_numpy(self.model)
