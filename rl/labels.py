"""Training labels from search trees: plain functions, tested on hand-built trees."""
from __future__ import annotations

import zlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

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


def verified_terminals(tree: Tree, k: int, *, min_reward: float = 1.0) -> list[int]:
    """Up to k terminals of verified trajectories with distinct solution texts (whitespace runs collapsed),
    best first by best_trajectory's order: what the policy is fine-tuned on per prompt (labels.sft_per_prompt).
    Several distinct right solutions narrow the policy less than one (the trees stay wider)."""
    cands = sorted((i for i in range(tree.size) if tree.terminal[i] and tree.reward[i] >= min_reward),
                   key=lambda i: (tree.reward[i], tree.visits[i], tree.q(i), -i), reverse=True)
    out, seen = [], set()
    for i in cands:
        key = " ".join(tree.steps(i).split())
        if key not in seen and len(out) < k:
            seen.add(key)
            out.append(i)
    return out


# ---------------------------------------------------------------------------------------------
# Process and outcome labels from sampled completions, Q-value labels (Q*), step preferences.
# ---------------------------------------------------------------------------------------------

def _binary_rows(rows: list[list[float]], what: str) -> list[np.ndarray]:
    """Each row as a float array of 0/1 values; a loud error on an empty row or another value."""
    out = []
    for i, row in enumerate(rows):
        a = np.asarray(row, dtype=np.float64)
        if a.ndim != 1 or a.size == 0:
            raise ValueError(f"{what}[{i}] must be a non-empty list of rewards, got {row!r}")
        if not np.isin(a, (0.0, 1.0)).all():
            raise ValueError(f"{what}[{i}] must hold only 0/1 verifier rewards, got {row!r}")
        out.append(a)
    return out


def math_shepherd_labels(completion_rewards: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Hard and soft process labels of one trajectory's steps (Math-Shepherd, Wang et al. 2024).

    From the prefix ending at step i, N completions were sampled and each was scored 0/1 by the
    verifier. The hard estimate says whether the step can still reach the right answer; the soft
    estimate is how often it did.

    Args:
        completion_rewards: [num_steps] lists, each of the N_i (>= 1) 0/1 rewards of the
            completions sampled from step i's prefix.
    Returns:
        hard: [num_steps] float, 1.0 if any completion was right, else 0.0.
        soft: [num_steps] float, the fraction of completions that were right.
    """
    rows = _binary_rows(completion_rewards, "completion_rewards")
    hard = np.array([r.max() for r in rows], dtype=np.float64)
    soft = np.array([r.mean() for r in rows], dtype=np.float64)
    return hard, soft


def orm_labels(rewards) -> np.ndarray:
    """Outcome labels: final correctness 0/1 per solution, from verifier rewards or gold comparison.

    Args:
        rewards: [n] floats or bools; only exact 0/1 values are accepted (soft scores are a
            different label and belong to a different function), anything else raises ValueError.
    Returns:
        [n] float64 of 0.0/1.0.
    """
    a = np.asarray(rewards, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"rewards must be one-dimensional, got shape {a.shape}")
    bad = ~np.isin(a, (0.0, 1.0))  # nan is caught here too
    if bad.any():
        raise ValueError(f"rewards must be 0 or 1; got {a[bad][:5].tolist()} at {np.flatnonzero(bad)[:5].tolist()}")
    return a


def fqi_targets(rewards, next_q_target: list, done, *, gamma: float) -> np.ndarray:
    """Fitted Q-iteration targets y = r + gamma * (1 - done) * max_{a' in top-K} Q_target(s', a').

    Q* (Wang et al. 2024, §4, offline reinforcement learning): the max runs over the K candidate
    next steps the policy proposes at s' (its top-K), not over every possible step.

    Args:
        rewards: [T] reward of each transition (s, a, r, s').
        next_q_target: [T] arrays, transition t's [K_t] target-network values Q_target(s', a') of
            the candidate next steps; an empty array (a terminal s', or no candidates) counts as 0.
        done: [T] bools, True where s' is terminal (its candidates, if any, are ignored).
        gamma: discount in [0, 1].
    Returns:
        [T] float64 targets.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    r = np.asarray(rewards, dtype=np.float64)
    d = np.asarray(done, dtype=bool)
    if not (r.ndim == 1 and d.shape == r.shape and len(next_q_target) == len(r)):
        raise ValueError(f"rewards, next_q_target and done must have the same length, got "
                         f"{r.shape}, {len(next_q_target)}, {d.shape}")
    best_next = np.array([np.max(q) if np.size(q) else 0.0 for q in next_q_target], dtype=np.float64)  # [T]
    return r + gamma * np.where(d, 0.0, best_next)


@dataclass(frozen=True)
class Transition:
    """One step of the reasoning MDP for fitted Q-iteration (Q* §3: deterministic transitions).

    States and actions are any hashable values (texts in practice). next_actions are the K
    candidate steps the policy proposes at next_state, over which the target takes its max.
    """
    state: Hashable
    action: Hashable
    reward: float
    next_state: Hashable
    next_actions: tuple = ()
    done: bool = False


def _as_q_function(q) -> Callable[[Hashable, Hashable], float]:
    """q as a callable; a table (Mapping keyed by (state, action)) is copied, missing entries read 0."""
    if isinstance(q, Mapping):
        table = dict(q)  # a frozen copy: a fit that edits the table in place cannot move the target
        return lambda s, a: float(table.get((s, a), 0.0))
    if callable(q):
        return q
    raise TypeError(f"q must be a callable q(state, action) or a Mapping {{(state, action): value}}, got {type(q)}")


def fitted_q_iteration(transitions: Sequence[Transition], q_init, *, gamma: float, iterations: int,
                       fit: Callable) -> tuple[object, np.ndarray]:
    """Fitted Q-iteration over a fixed batch of transitions (Q* §4, offline reinforcement learning).

    Each iteration k freezes the current Q_k as the target, computes y_k = fqi_targets(...) for
    every transition from it, records the mean squared Bellman error mean((Q_k(s, a) - y_k)^2)
    of the Q entering the iteration, and then fits Q_{k+1} = fit(states, actions, y_k).

    Args:
        transitions: the batch; every iteration uses all of it.
        q_init: Q_0, either a callable q(state, action) -> float (function approximation) or a
            Mapping {(state, action): value} (tabular; missing entries read 0.0, so {} is Q = 0).
        gamma: discount in [0, 1].
        iterations: number of fit steps (>= 1).
        fit: fit(states: list, actions: list, targets: np.ndarray [T]) -> the next q, a callable or
            a Mapping as q_init. Targets are all computed before fit is called, so a fit that
            updates its model in place does not change the targets of the current iteration.
    Returns:
        q: the last fitted Q (what fit returned).
        bellman_errors: [iterations] mean squared Bellman error of Q_0 .. Q_{iterations-1}; 0 at
            a fixed point of the (top-K) Bellman optimality operator.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if not transitions:
        raise ValueError("fitted_q_iteration needs at least one transition")
    states = [t.state for t in transitions]
    actions = [t.action for t in transitions]
    rewards = np.array([t.reward for t in transitions], dtype=np.float64)  # [T]
    done = np.array([t.done for t in transitions], dtype=bool)               # [T]
    q, errors = q_init, []
    for _ in range(iterations):
        target = _as_q_function(q)
        # terminal transitions skip their candidates: one fewer critic call each, and they count 0 anyway
        next_q = [np.array([] if t.done else [target(t.next_state, a) for a in t.next_actions], dtype=np.float64)
                  for t in transitions]
        y = fqi_targets(rewards, next_q, done, gamma=gamma)
        current = np.array([target(s, a) for s, a in zip(states, actions)], dtype=np.float64)  # [T]
        errors.append(float(np.mean((current - y) ** 2)))
        q = fit(states, actions, y)
    return q, np.array(errors, dtype=np.float64)


def _reward_rows(rows: list[list[float]], what: str) -> list[np.ndarray]:
    out = []
    for i, row in enumerate(rows):
        a = np.asarray(row, dtype=np.float64)
        if a.ndim != 1 or a.size == 0 or np.isnan(a).any():
            raise ValueError(f"{what}[{i}] must be a non-empty list of rewards without nan, got {row!r}")
        out.append(a)
    return out


def best_rollout_q(rollout_rewards: list[list[float]]) -> np.ndarray:
    """Q(s, a) label = the best reward among the rollouts from (s, a) (Q* §4, learning from rollout).

    The max, not the mean: Q* wants the optimal Q-value, which the best of several rollouts
    estimates from below.

    Args:
        rollout_rewards: [num_pairs] lists, each of the (>= 1) rewards of the rollouts from one (s, a).
    Returns:
        [num_pairs] float64.
    """
    return np.array([r.max() for r in _reward_rows(rollout_rewards, "rollout_rewards")], dtype=np.float64)


def stronger_policy_q(completion_rewards: list[list[float]]) -> np.ndarray:
    """Q(s, a) label from completions by a stronger policy (Q* §4, completion with stronger LLMs).

    The mean reward of the stronger policy's completions from (s, a). With one greedy completion
    (as in Q*) this is simply that completion's 0/1 reward.

    Args:
        completion_rewards: [num_pairs] lists, each of the (>= 1) rewards of one (s, a)'s completions.
    Returns:
        [num_pairs] float64.
    """
    return np.array([r.mean() for r in _reward_rows(completion_rewards, "completion_rewards")], dtype=np.float64)


def dpo_pairs(tree: Tree, *, min_gap: float) -> list[tuple[int, int]]:
    """(chosen, rejected) pairs of visited sibling nodes whose backed-up values differ by >= min_gap.

    Step-level preference pairs from a search tree (AlphaLLM, Tian et al. 2024, and step-level DPO):
    both steps share the same prefix, so their difference in tree.q is a difference between the
    steps alone. Unvisited nodes have no value and are skipped. The comparison is exact, so keep
    min_gap away from float round-off of the values compared.

    Args:
        tree: a searched tree (values from backup).
        min_gap: smallest value difference that makes a pair, > 0 (at 0 ties would pair in no order).
    Returns:
        pairs ordered by parent id, then by the siblings' order among the parent's children;
        chosen has the higher value.
    """
    if not min_gap > 0:
        raise ValueError(f"min_gap must be > 0, got {min_gap}")
    pairs = []
    for parent in range(tree.size):
        kids = [k for k in tree.children[parent] if tree.visits[k] > 0]
        for i, a in enumerate(kids):
            for b in kids[i + 1:]:
                qa, qb = tree.q(a), tree.q(b)
                if abs(qa - qb) >= min_gap:
                    pairs.append((a, b) if qa > qb else (b, a))
    return pairs


# ---------------------------------------------------------------------------------------------
# Labels from the node records of searched trees (rl.experience.NodeExperience): what the learner
# trains Q and the ORM on. Records of one search share (problem_id, policy_version) and name their
# parent by node id.
# ---------------------------------------------------------------------------------------------

@dataclass
class QTransitions:
    """A batch of MDP transitions (s, a, r, s') for fitted Q-iteration, indexed 0..T-1.

    texts[t] is the Q input of transition t: prompt + steps of s + the step a (which is also the text
    of s', the MDP being deterministic). The candidate next steps a' at s' are the searched children
    of s', themselves transitions: next_candidates[t] holds their indices, so Q_target(s', a') is
    Q_target(texts[j]) for j in next_candidates[t].
    """
    texts: list[str]
    rewards: np.ndarray               # [T] terminal reward at a terminal s', else 0
    done: np.ndarray                  # [T] bool: s' is terminal
    next_candidates: list[np.ndarray]  # [T] int arrays into texts
    problem_ids: list[str]


def _by_search(nodes: Sequence) -> dict[tuple[str, int], dict[int, object]]:
    """Node records grouped per search, {(problem_id, policy_version): {node id: record}}."""
    groups: dict[tuple[str, int], dict[int, object]] = {}
    for n in nodes:
        groups.setdefault((n.problem_id, n.policy_version), {})[n.node] = n
    return groups


def tree_transitions(nodes: Sequence) -> QTransitions:
    """QTransitions from searched tree nodes (NodeExperience records).

    A node with a verifier reward is terminal (done, r = its reward). A non-terminal node is kept
    only when at least one of its children is kept: its next-step candidates are those children.
    An unexpanded, unscored leaf has no next steps to take a max over and no reward, so it is left
    out (keeping it with an empty max would teach Q = 0 for every unexplored step).
    """
    texts, rewards, done, cands, pids = [], [], [], [], []
    for group in _by_search(nodes).values():
        kids: dict[int, list[int]] = {}
        for i, n in group.items():
            kids.setdefault(n.parent, []).append(i)
        index: dict[int, int] = {}
        for i in sorted(group, reverse=True):  # children have larger ids than parents
            n = group[i]
            terminal = not np.isnan(n.terminal_reward)
            kept_kids = [index[k] for k in kids.get(i, []) if k in index]
            if not terminal and not kept_kids:
                continue
            index[i] = len(texts)
            texts.append(n.state)
            rewards.append(float(n.terminal_reward) if terminal else 0.0)
            done.append(terminal)
            cands.append(np.array([] if terminal else kept_kids, dtype=np.int64))
            pids.append(n.problem_id)
    return QTransitions(texts, np.array(rewards, dtype=np.float64), np.array(done, dtype=bool), cands, pids)


def best_reward_below(nodes: Sequence) -> tuple[list[str], np.ndarray, list[str]]:
    """Q(s, a) = best verifier reward among the terminals at or below the node (Q*'s rollout source).

    Returns (texts, targets [n], problem ids) for the nodes with at least one scored terminal below.
    """
    texts, targets, pids = [], [], []
    for group in _by_search(nodes).values():
        best = {i: (n.terminal_reward if not np.isnan(n.terminal_reward) else -np.inf) for i, n in group.items()}
        for i in sorted(group, reverse=True):
            p = group[i].parent
            if p in best:
                best[p] = max(best[p], best[i])
        for i in sorted(group):
            if np.isfinite(best[i]):
                texts.append(group[i].state)
                targets.append(best[i])
                pids.append(group[i].problem_id)
    return texts, np.array(targets, dtype=np.float64), pids


def terminal_examples(nodes: Sequence) -> tuple[list[str], np.ndarray, list[str]]:
    """ORM examples: (complete solution texts, 0/1 verifier rewards, problem ids) of the scored terminals."""
    kept = [n for n in nodes if not np.isnan(n.terminal_reward)]
    return ([n.state for n in kept], orm_labels([n.terminal_reward for n in kept]) if kept else np.zeros(0),
            [n.problem_id for n in kept])


def is_heldout(problem_id: str, frac: float) -> bool:
    """A stable split of problems into critic training and held-out data (the same in every round and rank)."""
    return zlib.crc32(problem_id.encode()) % 10_000 < frac * 10_000


def step_preference_pairs(nodes: Sequence, *, min_gap: float) -> list[tuple[str, str, str]]:
    """(prefix, chosen step, rejected step) from visited sibling node records whose backed-up values
    differ by at least min_gap: dpo_pairs on NodeExperience records, grouped per search."""
    if not min_gap > 0:
        raise ValueError(f"labels.dpo_min_gap must be > 0, got {min_gap}")
    pairs = []
    for group in _by_search(nodes).values():
        siblings: dict[int, list] = {}
        for i in sorted(group):
            if group[i].visits > 0:
                siblings.setdefault(group[i].parent, []).append(group[i])
        for kids in siblings.values():
            for a_i, a in enumerate(kids):
                for b in kids[a_i + 1:]:
                    if abs(a.value - b.value) >= min_gap and a.step != b.step:
                        hi, lo = (a, b) if a.value > b.value else (b, a)
                        pairs.append((hi.state[:len(hi.state) - len(hi.step)], hi.step, lo.step))
    return pairs
