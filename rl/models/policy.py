"""The policy: a causal LM that proposes reasoning steps and completes solutions.

Batched by construction: every call takes a list of prefixes. This is the backend
interface that search code sees (generate steps, load weights with a version); a
faster engine or a vLLM backend implements the same methods.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rl.models.device import pick_device
from rl.models.weights import Weights, load_numpy, to_numpy


@dataclass
class StepSample:
    text: str          # generated text, including the newline that ended it (if any)
    num_tokens: int    # generated tokens
    logprob: float     # sum of the token log-probabilities under the sampling distribution
    finished: bool     # ended by a stop token (newline or EOS) rather than by max tokens


class Policy:
    def __init__(self, model, tokenizer, device: torch.device, version: int = 0):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.version = version
        self.newline_id = tokenizer.convert_tokens_to_ids("\n")
        if self.newline_id == tokenizer.unk_token_id:
            raise ValueError("the policy's tokenizer has no single newline token; steps end at newlines")

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto") -> "Policy":
        tok = AutoTokenizer.from_pretrained(str(path))
        tok.padding_side = "left"  # generation appends on the right
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        return cls(model, tok, pick_device(device))

    # ---- generation ------------------------------------------------------------------
    @torch.no_grad()
    def _generate(self, prefixes: list[str], *, n: int, max_new_tokens: int, temperature: float,
                  stop_ids: list[int], seed: int | None) -> list[list[StepSample]]:
        enc = self.tokenizer(prefixes, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        greedy = temperature <= 0
        if seed is not None:
            torch.manual_seed(seed)
        out = self.model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=not greedy,
            temperature=None if greedy else temperature, top_p=None, top_k=None,
            num_return_sequences=n, eos_token_id=stop_ids, pad_token_id=self.tokenizer.pad_token_id,
            return_dict_in_generate=True, output_scores=True)
        new = out.sequences[:, enc["input_ids"].shape[1]:]                  # [B*n, T]
        # log-probs of the chosen tokens under the (temperature-scaled) sampling distribution
        scores = torch.stack(out.scores, dim=1).float().log_softmax(-1)    # [B*n, T, V]
        token_lp = scores.gather(-1, new.unsqueeze(-1)).squeeze(-1)        # [B*n, T]
        results: list[list[StepSample]] = []
        for row in range(new.shape[0]):
            ids = new[row].tolist()
            length, finished = len(ids), False
            for j, t in enumerate(ids):
                if t in stop_ids:
                    length, finished = j + 1, True
                    break
            kept = [t for t in ids[:length] if t != self.tokenizer.eos_token_id]
            sample = StepSample(text=self.tokenizer.decode(kept), num_tokens=length,
                                logprob=float(token_lp[row, :length].sum()), finished=finished)
            if row % n == 0:
                results.append([])
            results[-1].append(sample)
        return results

    def sample_steps(self, prefixes: list[str], n: int, *, temperature: float = 1.0,
                     max_new_tokens: int = 24, seed: int | None = None) -> list[list[StepSample]]:
        """n next steps for each prefix; a step ends at a newline or EOS."""
        return self._generate(prefixes, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                              stop_ids=[self.newline_id, self.tokenizer.eos_token_id], seed=seed)

    def complete(self, prefixes: list[str], *, max_new_tokens: int = 128, temperature: float = 0.0,
                 seed: int | None = None) -> list[StepSample]:
        """One completion to EOS per prefix (greedy when temperature is 0)."""
        res = self._generate(prefixes, n=1, max_new_tokens=max_new_tokens, temperature=temperature,
                             stop_ids=[self.tokenizer.eos_token_id], seed=seed)
        return [r[0] for r in res]

    # ---- weights ---------------------------------------------------------------------
    def load_weights(self, version: int, weights: Weights) -> None:
        load_numpy(self.model, weights)
        self.version = version

    def weights(self) -> Weights:
        return to_numpy(self.model)
