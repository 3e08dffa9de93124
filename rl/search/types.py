"""What every search takes and returns: Models, Budget, Spent, SearchResult, the Search protocol."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from rl.search.tree import Tree
from rl.tasks.base import Problem, Task


@dataclass
class Models:
    """What a search may call.

    Every critic has one batched method, `score(texts: list[str]) -> np.ndarray` ([len(texts)] floats
    in [0, 1]); each reads its own kind of text:
      value  V(s):    prompt + steps so far
      prm    PRM(s):  prompt + steps so far, scoring the last step
      orm    ORM(s):  prompt + a complete solution
      q      Q(s, a): prompt + steps so far + one candidate next step
    A search that needs a critic it was not given falls back to `value` (documented per method).
    reward is the verifier (labels available) or None (critic only).
    """
    policy: object                                   # rl.models.Policy interface: sample_steps, complete
    value: object | None = None
    reward: Callable[[Problem, str], float] | None = None
    prm: object | None = None
    orm: object | None = None
    q: object | None = None
    rollout_policy: object | None = None             # a (smaller) policy for fast rollouts; None = policy


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


def finish_greedily(tree: Tree, node: int, policy, spent: Spent, *, max_new_tokens: int) -> str:
    """Greedy completion of a path that stops short of an answer; its tokens are added to spent."""
    done = policy.complete([tree.state(node)], temperature=0.0, max_new_tokens=max_new_tokens)[0]
    spent.generated_tokens += done.num_tokens
    return done.text
