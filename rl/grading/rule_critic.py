"""A task's rule-based utility behind the critic interface: Q*'s "rule-based utility" as a PRM, ORM or V.

A task that can check its own steps from the text alone (no label) offers

    step_utilities(state: str) -> list[float]     one utility in [0, 1] per step of prompt + steps

(rl.tasks.arithmetic: a step keeps the value of the line above it). RuleCritic turns that into the
`score(texts)` every search calls (rl.search.types.Models):

  prm    the utility of the last step (1.0 for a state with no steps yet)
  value  the smallest utility on the path: 1.0 while every step so far is right
  orm    the same, read on a complete solution

It has no weights; it is chosen by search.rule_critics (which critic roles it fills) and by A*'s
search.astar_g_source = "rule".
"""
from __future__ import annotations

import numpy as np

RULE_KINDS = ("value", "prm", "orm")


def has_rule_utility(task) -> bool:
    return callable(getattr(task, "step_utilities", None))


def check_rule_config(task, search_cfg) -> None:
    """ValueError naming the search key that asks a task without a rule-based utility for one."""
    for kind in search_cfg.rule_critics:
        RuleCritic(task, kind)
    if search_cfg.astar_g_source == "rule":
        RuleCritic(task, "prm", key='search.astar_g_source = "rule"')


class RuleCritic:
    version = 0

    def __init__(self, task, kind: str, *, key: str = "search.rule_critics"):
        if kind not in RULE_KINDS:
            raise ValueError(f"{key}: {kind!r} is not a rule critic role; known: {', '.join(RULE_KINDS)}")
        if not has_rule_utility(task):
            raise ValueError(f"{key}: task {getattr(task, 'name', task)!r} has no rule-based step utility "
                             "(step_utilities); use trained critics")
        self.task, self.kind = task, kind

    def score(self, texts: list[str]) -> np.ndarray:
        """[len(texts)] utilities in [0, 1]."""
        out = np.empty(len(texts))
        for i, text in enumerate(texts):
            u = self.task.step_utilities(text)
            out[i] = (u[-1] if self.kind == "prm" else min(u)) if u else 1.0
        return out
