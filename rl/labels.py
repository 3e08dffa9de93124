"""Training labels from search trees: plain functions, tested on hand-built trees."""
from __future__ import annotations

import numpy as np

from rl.search.tree import Tree


def mc_value_targets(tree: Tree) -> np.ndarray:
    """Monte Carlo value target per node: mean terminal reward over the terminal nodes below it.

    Returns [N] floats; nan where no scored terminal node lies below (or at) the node.
    """
    n = tree.size
    total = np.where(np.isnan(tree.reward[:n]), 0.0, tree.reward[:n])
    count = (~np.isnan(tree.reward[:n])).astype(np.float64)
    for i in range(n - 1, 0, -1):  # children have larger ids than parents
        p = tree.parent[i]
        total[p] += total[i]
        count[p] += count[i]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def best_trajectory(tree: Tree, *, min_reward: float = 1.0) -> int | None:
    """The terminal node of the best rewarded trajectory, or None if none reaches min_reward.

    Among rewarded terminals: highest reward, then most visits, then highest backed-up value.
    """
    cands = [i for i in range(tree.size) if tree.terminal[i] and tree.reward[i] >= min_reward]
    if not cands:
        return None
    return max(cands, key=lambda i: (tree.reward[i], tree.visits[i], tree.q(i), -i))
