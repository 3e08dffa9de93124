"""The policy: a causal LM that proposes reasoning steps and completes solutions.

Batched by construction: every call takes a list of prefixes. It satisfies the backend interface
that search code sees (`GenerationBackend` in rl/models/backend.py: generate steps, load weights with
a version); the engine (rl/models/engine/) or a vLLM backend implements the same methods.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rl.models.backend import StepSample
from rl.models.device import pick_device
from rl.models.weights import Weights, load_numpy, to_numpy

if TYPE_CHECKING:
    from rl.tasks.termination import Termination


@dataclass
class _Piece:
    """What one generation round added to a step: the text between two stop events."""
    text: str
    num_tokens: int
    logprob: float


def cut_step(termination: Termination, pieces: list[_Piece]) -> tuple[str, float]:
    """The complete step in pieces whose text `termination.ends`, and the log-probability of its pieces.

    The step is `split(text)[0]`: all of the text except after a code block closed by a dedent, when the
    dedented line (the next step's start, a piece of its own) was generated only to see the block end.
    Its tokens stay in num_tokens (they were spent) but leave the log-probability.
    """
    text = "".join(p.text for p in pieces)
    step = termination.split(text)[0]
    logprob, start = 0.0, 0
    for p in pieces:
        if start < len(step):  # a piece that starts inside the step (the cut falls between pieces)
            logprob += p.logprob
        start += len(p.text)
    return step, logprob


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
    def _generate_rows(self, prefixes: list[str], *, n: int, max_new_tokens: int, temperature: float,
                       stop_ids: list[int], seed: int | None) -> list[tuple[list[int], torch.Tensor, bool]]:
        """Per generated row (prefix-major, n per prefix): token ids up to the first stop token (included),
        their log-probs ([len(ids)]), and whether a stop token ended the row."""
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
        rows = []
        for row in range(new.shape[0]):
            ids = new[row].tolist()
            length, finished = len(ids), False
            for j, t in enumerate(ids):
                if t in stop_ids:
                    length, finished = j + 1, True
                    break
            rows.append((ids[:length], token_lp[row, :length], finished))
        return rows

    def _generate(self, prefixes: list[str], *, n: int, max_new_tokens: int, temperature: float,
                  stop_ids: list[int], seed: int | None) -> list[list[StepSample]]:
        rows = self._generate_rows(prefixes, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                                   stop_ids=stop_ids, seed=seed)
        results: list[list[StepSample]] = []
        for row, (ids, lps, finished) in enumerate(rows):
            kept = [t for t in ids if t != self.tokenizer.eos_token_id]
            sample = StepSample(text=self.tokenizer.decode(kept), num_tokens=len(ids), logprob=float(lps.sum()),
                                finished=finished)
            if row % n == 0:
                results.append([])
            results[-1].append(sample)
        return results

    def sample_steps(self, prefixes: list[str], n: int, *, temperature: float = 1.0, max_new_tokens: int = 24,
                     seed: int | None = None, termination: Termination | None = None) -> list[list[StepSample]]:
        """n next steps for each prefix.

        Without a termination a step ends at a newline or EOS. With one (rl/tasks/termination.py), generation
        stops at its stop strings and EOS; at each stop `termination.ends` decides, and while it is False the
        same step goes on (generate again from prefix + the step so far), up to max_new_tokens in all.
        """
        if termination is None:
            return self._generate(prefixes, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                                  stop_ids=[self.newline_id, self.tokenizer.eos_token_id], seed=seed)
        return self._sample_terminated(prefixes, n, termination, temperature=temperature,
                                       max_new_tokens=max_new_tokens, seed=seed)

    def _stop_ids(self, termination: Termination) -> list[int]:
        """Token ids that end a generation round: the last token of each stop string, then EOS.

        A one-token stop string stops on itself; a longer one ("\\n\\n" in a character vocabulary) stops
        on its last token, which only proposes a boundary: `termination.ends` reads the decoded text.
        """
        ids = []
        for stop in termination.stop_strings:
            toks = self.tokenizer(stop, add_special_tokens=False)["input_ids"]
            if not toks:
                raise ValueError(f"the policy's tokenizer encodes stop string {stop!r} as no tokens")
            ids.append(toks[-1])
        return list(dict.fromkeys(ids + [self.tokenizer.eos_token_id]))

    def _sample_terminated(self, prefixes: list[str], n: int, termination: Termination, *, temperature: float,
                           max_new_tokens: int, seed: int | None) -> list[list[StepSample]]:
        """sample_steps with a termination: rounds of generation, each from prefix + the step so far.

        The first round is one batched call for all prefixes, as without a termination; each later round
        batches every step that stopped where `ends` is still False, one sequence each, with the round's
        seed (seed + round). Tokens are re-encoded from the text at each round.
        """
        stop_ids = self._stop_ids(termination)
        eos = self.tokenizer.eos_token_id
        starts = [p for p in prefixes for _ in range(n)]            # the prefix of each step, prefix-major
        pieces: list[list[_Piece]] = [[] for _ in starts]
        out: list[StepSample | None] = [None] * len(starts)
        todo = list(range(len(starts)))                              # steps that generate this round
        rows = self._generate_rows(prefixes, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                                   stop_ids=stop_ids, seed=seed)
        for rnd in itertools.count(1):
            going = []
            for i, (ids, lps, stopped) in zip(todo, rows):
                left = max_new_tokens - sum(p.num_tokens for p in pieces[i])
                if len(ids) > left:  # the round ran longer than this step's own budget
                    ids, lps, stopped = ids[:left], lps[:left], False
                kept = [t for t in ids if t != eos]
                pieces[i].append(_Piece(self.tokenizer.decode(kept), len(ids), float(lps.sum())))
                text = "".join(p.text for p in pieces[i])
                used = sum(p.num_tokens for p in pieces[i])
                if stopped and ids[-1] != eos and termination.ends(text):
                    step, logprob = cut_step(termination, pieces[i])
                    out[i] = StepSample(text=step, num_tokens=used, logprob=logprob, finished=True, complete=True)
                elif stopped and ids[-1] != eos and used < max_new_tokens:
                    going.append(i)  # a stop that does not end the step: go on with the same step
                else:  # EOS (the solution ends here), or out of tokens inside the step
                    out[i] = StepSample(text=text, num_tokens=used, logprob=sum(p.logprob for p in pieces[i]),
                                        finished=stopped and ids[-1] == eos, complete=False)
            if not going:
                break
            todo = going
            rows = self._generate_rows(
                [starts[i] + "".join(p.text for p in pieces[i]) for i in todo], n=1,
                max_new_tokens=max(max_new_tokens - sum(p.num_tokens for p in pieces[i]) for i in todo),
                temperature=temperature, stop_ids=stop_ids, seed=None if seed is None else seed + rnd)
        return [out[k * n:(k + 1) * n] for k in range(len(prefixes))]

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
