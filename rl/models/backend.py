"""What a search sees of its models: StepSample, the GenerationBackend protocol and the Critic protocol.

Both generation backends (`Policy` in rl/models/policy.py, `Engine` in rl/models/engine/) return
StepSamples and satisfy GenerationBackend; `Models` (rl/search/types.py) is typed with these. This
module imports neither torch nor transformers, so search code and fakes can use it cheaply.

The backend interface (any backend with these methods can replace another, a vLLM one included):

    sample_steps(prefixes, n, *, temperature, max_new_tokens, seed, termination=None) -> list[list[StepSample]]
        generate: n next steps per prefix; a step ends at a newline or EOS, or, given a termination
        (rl/tasks/termination.py), where `termination.ends` says at one of its stop strings.
    complete(prefixes, *, max_new_tokens, temperature, seed) -> list[StepSample]
        generate: one completion to EOS per prefix (greedy at temperature 0).
    score(prefixes, continuations) -> np.ndarray
        score sequences: [B] summed log-probabilities of each continuation given its prefix.
    load_weights(version, weights) / weights() / version
        load weights (a dict of numpy arrays) tagged with a version; every cached state is dropped.

StepSample.logprob is the sum of the generated tokens' log-probabilities under the distribution they
were sampled from (temperature-scaled, top-k/top-p filtered and renormalised; the raw softmax when greedy).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from rl.models.weights import Weights
    from rl.tasks.termination import Termination


@dataclass
class StepSample:
    text: str          # generated text, including the newline (or other step end) that ended it, if any
    num_tokens: int    # generated tokens (all of them, also a line cut off the step: see cut_step)
    logprob: float     # sum of the token log-probabilities of text under the sampling distribution
    finished: bool     # ended by a stop token (newline or EOS) or the termination, rather than by max tokens
    # With a termination: True when it ended the step (not EOS, not max tokens). None when the backend was
    # given no termination; the step's text then says it (a newline step ends with "\n").
    complete: bool | None = None


class GenerationBackend(Protocol):
    """What searches and rollout workers call on a policy; see the module docstring."""
    version: int

    def sample_steps(self, prefixes: list[str], n: int, *, temperature: float = 1.0, max_new_tokens: int = 24,
                     seed: int | None = None, termination: Termination | None = None) -> list[list[StepSample]]: ...

    def complete(self, prefixes: list[str], *, max_new_tokens: int = 128, temperature: float = 0.0,
                 seed: int | None = None) -> list[StepSample]: ...

    def score(self, prefixes: list[str], continuations: list[str]) -> np.ndarray: ...

    def load_weights(self, version: int, weights: Weights) -> None: ...

    def weights(self) -> Weights: ...


class Critic(Protocol):
    """A V, Q, PRM or ORM critic as a search calls it (`Models` says which text each kind reads).

    Learned critics (rl/models/critic.py) also have load_weights, weights and version; a rule critic
    (rl/grading/rule_critic.py) has only this.
    """

    def score(self, texts: list[str]) -> np.ndarray:
        """[len(texts)] floats in [0, 1]."""
        ...
