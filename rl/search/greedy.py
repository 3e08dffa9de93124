"""Greedy decoding: one chain of thought per problem, batched across problems."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from rl.search.tree import Tree
from rl.search.types import Budget, Models, SearchResult, Spent
from rl.tasks.base import Problem, Task


def greedy_batch(problems: list[Problem], task: Task, policy, *, max_new_tokens: int) -> list[SearchResult]:
    """Greedy solutions for many problems in one batched generate; each tree is root + one leaf."""
    t0 = time.perf_counter()
    outs = policy.complete([task.prompt(p) for p in problems], max_new_tokens=max_new_tokens)
    seconds = (time.perf_counter() - t0) / max(len(problems), 1)
    results = []
    for p, o in zip(problems, outs):
        tree = Tree(task.prompt(p))
        leaf = tree.add_child(0, o.text, logprob=o.logprob, terminal=True)
        results.append(SearchResult(answer=task.extract_answer(o.text), solution=o.text, tree=tree, chosen=leaf,
                                    spent=Spent(generated_tokens=o.num_tokens, seconds=seconds)))
    return results


@dataclass(frozen=True)
class Greedy:
    max_new_tokens: int = 192

    def __call__(self, problem: Problem, task: Task, models: Models, budget: Budget,
                 rng: np.random.Generator) -> SearchResult:
        cap = min(self.max_new_tokens, budget.max_tokens) if budget.max_tokens else self.max_new_tokens
        return greedy_batch([problem], task, models.policy, max_new_tokens=cap)[0]
