"""The critics the loop trains and the searches read (V, and PRM / ORM / Q when configured).

Two kinds, one interface (`score(states) -> [len(states)] floats in (0, 1]`, `load_weights`, `weights`):

  ValueCritic      ("head") the policy's kind of backbone with a scalar head on the last token, stored
                   as a HF token-classification model with one label; the score of a state is
                   sigmoid(logit) at its last token, trained by BCE on labels.
  GenerativeCritic ("generative") a causal LM fine-tuned on the verified solutions of the training
                   problems (SFT, outcome labels only). The score of a state is the probability of its
                   least likely solution token: exp(min over the tokens after the prompt of log p).
                   A wrong step holds a token a verifier-trained LM does not expect, so it reads as
                   P(no error so far), for a prefix (V, PRM) as for a whole solution (ORM).
                   On held-out problems of the embedded arithmetic task it ranks a problem's right
                   samples above its wrong ones at AUC 0.98, where a scalar head trained on the same
                   outcome labels stays near 0.5 (docs/results/critic_quality.md).

Both save and load with save_pretrained/from_pretrained; load_critic tells them apart by the folder's
architecture. A state is prompt + steps; the prompt is the text up to and including its first newline
(the tasks' "Q: <question>\n"), see prompt_chars.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

from rl.losses import IGNORE, sft_batch
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


CRITIC_KINDS = ("head", "generative")
MAX_LEN = 1024  # tokens a critic reads of one state (the left of a longer prompt is cut, as in training)


def critic_tokenizer(path: str | Path):
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.padding_side = "right"  # scores are read at real tokens of right-padded rows
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def prompt_chars(state: str) -> int:
    """Characters of the prompt at the start of a state: up to and including its first newline (all of
    it when there is none). The tasks' prompts are one line, "Q: <question>\n"."""
    cut = state.find("\n")
    return len(state) if cut < 0 else cut + 1


def split_state(state: str) -> tuple[str, str]:
    """(prompt, steps) of a state."""
    k = prompt_chars(state)
    return state[:k], state[k:]


def min_token_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B] the smallest log p(label) over each row's labelled tokens (0 where a row has none).
    logits [B, T, V], labels [B, T] (rl.losses.sft_batch)."""
    logp = logits[:, :-1].float().log_softmax(-1)
    target = labels[:, 1:]
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # [B, T-1]
    return picked.masked_fill(target == IGNORE, 0.0).min(-1).values


def verifier_batch(tokenizer, states: list[str], max_len: int = MAX_LEN) -> dict[str, torch.Tensor]:
    """The SFT batch of states split into (prompt, steps), without EOS: labels on the step tokens."""
    prompts, steps = zip(*(split_state(s) for s in states))
    return sft_batch(tokenizer, list(prompts), list(steps), max_len, eos=False)


@torch.no_grad()
def verifier_logprobs(model, tokenizer, states: list[str], device, batch_size: int = 64,
                      max_len: int = MAX_LEN) -> np.ndarray:
    """[len(states)] min token log-prob of each state's steps under a causal LM (<= 0)."""
    out = []
    for i in range(0, len(states), batch_size):
        b = verifier_batch(tokenizer, states[i:i + batch_size], max_len)
        logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)).logits
        out.append(min_token_logprob(logits, b["labels"].to(device)).cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def load_generative_model(path: str | Path):
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def folder_kind(path: str | Path) -> str:
    """"generative" for a causal-LM folder (a policy, or a saved generative critic), "head" otherwise."""
    arch = (AutoConfig.from_pretrained(str(path)).architectures or [""])[0]
    return "generative" if arch.endswith("ForCausalLM") else "head"


def load_critic(path: str | Path, kind: str | None = None, *, tokenizer_path: str | Path | None = None,
                device: str = "auto"):
    """A critic of `kind` from a folder; kind None reads it off the folder (a causal LM is generative).

    A head critic from a policy folder gets a new head; a generative one starts as a copy of the policy."""
    kind = kind or folder_kind(path)
    if kind not in CRITIC_KINDS:
        raise ValueError(f"critic kind {kind!r}: use one of {', '.join(CRITIC_KINDS)}")
    cls = GenerativeCritic if kind == "generative" else ValueCritic
    return cls.from_pretrained(path, tokenizer_path=tokenizer_path, device=device)


class ValueCritic:
    kind = "head"

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
        return cls(load_value_model(path), critic_tokenizer(tokenizer_path or path), pick_device(device))

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


class GenerativeCritic(ValueCritic):
    """A causal LM as a verifier: score = exp(min log p) of the state's step tokens (module docstring)."""
    kind = "generative"

    @classmethod
    def from_pretrained(cls, path: str | Path, tokenizer_path: str | Path | None = None,
                        device: str = "auto") -> "GenerativeCritic":
        return cls(load_generative_model(path), critic_tokenizer(tokenizer_path or path), pick_device(device))

    def _score(self, states: list[str]) -> np.ndarray:
        self.calls += len(states)
        return np.exp(verifier_logprobs(self.model, self.tokenizer, states, self.device, self.batch_size))
