"""What the engine's scheduler works on: one request per sequence, the public call it belongs to, a prefill.

A request's results (tokens, summed log-prob, whether a stop token ended it) grow on the request itself,
in Python, one token per decode step: the scheduler makes one small device-to-host copy per step instead
of tensor ops per sequence.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from rl.models.backend import StepSample


@dataclass
class EngineSample(StepSample):
    """A StepSample that also carries its token ids (stop token included, as in num_tokens)."""
    token_ids: tuple[int, ...] = ()


@dataclass(eq=False)
class _Seq:
    """One sequence to generate (or, with score_from >= 1, to score) and, once done, its result."""
    prompt: list[int]
    max_new: int = 0
    stop: tuple[int, ...] = ()
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    uniforms: list[float] | None = None     # max_new draws for inverse-CDF sampling; None when greedy
    score_from: int = 0                     # >= 1: return logits predicting prompt[score_from:] and one more
    # results; tokens and logprob grow by one token per decode step
    tokens: list[int] = field(default_factory=list)
    logprob: float = 0.0
    finished: bool = False                  # stopped at a stop token (not at max_new)
    logits: torch.Tensor | None = None      # score requests: [len(prompt) - score_from + 1, V]
    done: bool = False
    error: BaseException | None = None
    call: "_Call | None" = None


class _Call:
    """The sequences of one public call: its caller sleeps on `event` until `remaining` reaches 0."""

    def __init__(self, remaining: int):
        self.remaining = remaining
        self.event = threading.Event()


@dataclass(eq=False)
class _Prefill:
    """Requests admitted in one step and what is left to encode of their prompts."""
    rows: list[_Seq]                   # prefill rows: one per distinct generating prompt, then scoring requests
    slots: list[int]                   # slot of each row
    lens: list[int]                    # prompt tokens of each row already in its slot (from the prefix cache)
    first: list[int]                   # first encoded position (relative to lens) whose logits are needed
    leaders: dict[tuple[int, ...], _Seq]
    members: list[_Seq]                # generating seqs whose prompt a leader encodes for them
    order: list[_Seq]                  # generating seqs in slot order
    scores: list[_Seq]
    slot_of: dict[int, int]            # id(seq) -> slot


def finish(seqs: list[_Seq]) -> None:
    """Mark seqs done (engine lock held) and wake each caller whose last sequence this was."""
    for s in seqs:
        s.done = True
        c = s.call
        if c is not None:
            c.remaining -= 1
            if c.remaining == 0:
                c.event.set()
