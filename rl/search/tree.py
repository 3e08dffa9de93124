"""The search tree as arrays indexed by node id (mctx style), with step texts in a list.

Node 0 is the root (the prompt). Children are always added after their parent, so
ids are a topological order: a reversed sweep visits children before parents.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


def _grow(a: np.ndarray, fill) -> np.ndarray:
    out = np.full(2 * len(a), fill, dtype=a.dtype)
    out[:len(a)] = a
    return out


# fill value of every per-node array, used when the arrays grow
_FILLS = {"parent": -1, "depth": 0, "visits": 0, "value_sum": 0.0, "logprob": 0.0, "num_tokens": 0,
          "evaluation": np.nan, "prm": np.nan, "orm": np.nan, "step_q": np.nan, "reward": np.nan, "merged": 0,
          "terminal": False, "expanded": False}


@dataclass
class Tree:
    prompt: str
    parent: np.ndarray = field(default_factory=lambda: np.full(16, -1, np.int32))     # [N] -1 at the root
    depth: np.ndarray = field(default_factory=lambda: np.zeros(16, np.int32))         # [N] steps from the root
    visits: np.ndarray = field(default_factory=lambda: np.zeros(16, np.int32))        # [N]
    value_sum: np.ndarray = field(default_factory=lambda: np.zeros(16, np.float64))   # [N] sum of backed-up scores
    logprob: np.ndarray = field(default_factory=lambda: np.zeros(16, np.float64))     # [N] log p(step | parent)
    num_tokens: np.ndarray = field(default_factory=lambda: np.zeros(16, np.int32))    # [N] tokens of the step
    evaluation: np.ndarray = field(default_factory=lambda: np.full(16, np.nan))       # [N] leaf score when evaluated
    prm: np.ndarray = field(default_factory=lambda: np.full(16, np.nan))              # [N] PRM score, nan if unused
    orm: np.ndarray = field(default_factory=lambda: np.full(16, np.nan))              # [N] mean rollout/ORM score
    step_q: np.ndarray = field(default_factory=lambda: np.full(16, np.nan))           # [N] Q(parent, step), nan if unused
    reward: np.ndarray = field(default_factory=lambda: np.full(16, np.nan))           # [N] terminal reward, nan if none
    merged: np.ndarray = field(default_factory=lambda: np.zeros(16, np.int32))        # [N] samples merged into node
    terminal: np.ndarray = field(default_factory=lambda: np.zeros(16, bool))          # [N]
    expanded: np.ndarray = field(default_factory=lambda: np.zeros(16, bool))          # [N]
    text: list[str] = field(default_factory=lambda: [""])                             # step leading to node i
    children: list[list[int]] = field(default_factory=lambda: [[]])
    size: int = 1

    def add_child(self, parent: int, text: str, *, logprob: float = 0.0, num_tokens: int = 0,
                  terminal: bool = False) -> int:
        """Append a node under parent; return its id."""
        if self.size == len(self.parent):
            for name, fill in _FILLS.items():
                setattr(self, name, _grow(getattr(self, name), fill))
        i = self.size
        self.size += 1
        self.parent[i] = parent
        self.depth[i] = self.depth[parent] + 1
        self.logprob[i] = logprob
        self.num_tokens[i] = num_tokens
        self.terminal[i] = terminal
        self.text.append(text)
        self.children.append([])
        self.children[parent].append(i)
        return i

    def q(self, node: int) -> float:
        """Mean backed-up score of node (0 when unvisited)."""
        return self.value_sum[node] / self.visits[node] if self.visits[node] else 0.0

    def path(self, node: int) -> list[int]:
        """Node ids from the root to node, inclusive."""
        out = []
        while node >= 0:
            out.append(node)
            node = int(self.parent[node])
        return out[::-1]

    def steps(self, node: int) -> str:
        """Concatenated step texts from the root to node (the solution so far)."""
        return "".join(self.text[i] for i in self.path(node)[1:])

    def state(self, node: int) -> str:
        """Prompt plus steps: the text the policy and critics read at node."""
        return self.prompt + self.steps(node)

    def to_json(self, chosen: int | None = None) -> dict:
        """Plain-data export: one record per node (nan scores as None), plus the chosen path."""
        def num(x) -> float | None:
            return None if math.isnan(x) else float(x)

        nodes = [{"id": i, "parent": int(self.parent[i]), "depth": int(self.depth[i]), "text": self.text[i],
                  "visits": int(self.visits[i]), "value": self.q(i), "evaluation": num(self.evaluation[i]),
                  "prm": num(self.prm[i]), "orm": num(self.orm[i]), "q": num(self.step_q[i]), "reward": num(self.reward[i]),
                  "merged": int(self.merged[i]), "terminal": bool(self.terminal[i]),
                  "logprob": float(self.logprob[i]), "num_tokens": int(self.num_tokens[i])}
                 for i in range(self.size)]
        return {"prompt": self.prompt, "nodes": nodes, "chosen_path": self.path(chosen) if chosen is not None else []}


def backup(tree: Tree, leaf: int, score: float) -> None:
    """Add score and one visit to leaf and every ancestor up to the root."""
    for i in tree.path(leaf):
        tree.visits[i] += 1
        tree.value_sum[i] += score


def puct_select(tree: Tree, node: int, *, c: float) -> int:
    """Child maximising Q + c * P * sqrt(N(node)) / (1 + N(child)) (PUCT, Silver et al. 2017).

    P is the policy's prior of each sibling step: a softmax over the siblings' per-token
    log-probabilities (per token, so that long steps are not penalised for their length).
    """
    kids = tree.children[node]
    if not kids:
        raise ValueError(f"node {node} has no children")
    lp = np.array([tree.logprob[k] / max(int(tree.num_tokens[k]), 1) for k in kids])
    prior = np.exp(lp - lp.max())
    prior /= prior.sum()
    sqrt_n = math.sqrt(max(int(tree.visits[node]), 1))
    scores = [tree.q(k) + c * p * sqrt_n / (1 + tree.visits[k]) for k, p in zip(kids, prior)]
    return kids[int(np.argmax(scores))]


def uct_select(tree: Tree, node: int, *, c: float) -> int:
    """Child maximising Q + c * sqrt(ln N(node) / N(child)); unvisited children first (UCT, Kocsis & Szepesvari 2006)."""
    kids = tree.children[node]
    if not kids:
        raise ValueError(f"node {node} has no children")
    best, best_score = kids[0], -math.inf
    log_n = math.log(max(int(tree.visits[node]), 1))
    for k in kids:
        if tree.visits[k] == 0:
            return k  # first unvisited child in insertion order
        s = tree.q(k) + c * math.sqrt(log_n / tree.visits[k])
        if s > best_score:
            best, best_score = k, s
    return best
