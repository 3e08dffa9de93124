"""What every search takes and returns: Models, Budget, Spent, SearchResult, the Search protocol."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from rl.search.tree import Tree
from rl.tasks.base import Problem, Task


@dataclass
class Models:
    """What a search may call. reward is the verifier (labels available) or None (critic only)."""
    policy: object                                   # rl.models.Policy interface: sample_steps, complete
    value: object | None = None                      # rl.models.ValueCritic interface: score
    reward: Callable[[Problem, str], float] | None = None


@dataclass(frozen=True)
class Budget:
    max_tokens: int = 0   # generated tokens per problem; 0 = no cap


@dataclass
class Spent:
    generated_tokens: int = 0
    critic_calls: int = 0
    seconds: float = 0.0


@dataclass
class SearchResult:
    answer: str | None          # extracted final answer
    solution: str               # the chosen solution text (steps)
    tree: Tree                  # everything the search built
    chosen: int                 # node id of the chosen leaf
    spent: Spent = field(default_factory=Spent)


class Search(Protocol):
    def __call__(self, problem: Problem, task: Task, models: Models, budget: Budget,
                 rng: np.random.Generator) -> SearchResult: ...
