"""Experience records: what rollouts send to the learner, each tagged with the versions that made it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rl.labels import best_trajectory, mc_value_targets
from rl.search.types import SearchResult


@dataclass(frozen=True)
class NodeExperience:
    """One searched tree node (not the root)."""
    id: str                 # "{problem_id}/v{policy_version}/{node}"; stable for a given search
    problem_id: str
    node: int
    parent: int
    depth: int
    state: str              # prompt + steps up to and including this node
    step: str               # the step text that leads to this node
    visits: int
    value: float            # mean backed-up score
    value_target: float     # Monte Carlo target (mean terminal reward below); nan if none
    terminal_reward: float  # verifier reward at a terminal node; nan otherwise
    policy_version: int
    critic_version: int


@dataclass(frozen=True)
class Trajectory:
    """The best rewarded solution a search found for one problem."""
    id: str
    problem_id: str
    prompt: str
    solution: str
    reward: float
    policy_version: int
    critic_version: int


def experiences_from_search(problem_id: str, result: SearchResult, *, policy_version: int,
                            critic_version: int) -> tuple[list[NodeExperience], Trajectory | None]:
    """Node records for every non-root node, and the best rewarded trajectory (if any)."""
    tree = result.tree
    targets = mc_value_targets(tree)
    nodes = [NodeExperience(
        id=f"{problem_id}/v{policy_version}/{i}", problem_id=problem_id, node=i, parent=int(tree.parent[i]),
        depth=int(tree.depth[i]), state=tree.state(i), step=tree.text[i], visits=int(tree.visits[i]),
        value=tree.q(i), value_target=float(targets[i]), terminal_reward=float(tree.reward[i]),
        policy_version=policy_version, critic_version=critic_version) for i in range(1, tree.size)]
    best = best_trajectory(tree)
    traj = None if best is None else Trajectory(
        id=f"{problem_id}/v{policy_version}/traj", problem_id=problem_id, prompt=tree.prompt,
        solution=tree.steps(best), reward=float(tree.reward[best]), policy_version=policy_version,
        critic_version=critic_version)
    return nodes, traj


def value_examples(nodes: list[NodeExperience]) -> tuple[list[str], np.ndarray]:
    """(states, targets) for the value critic from the nodes that have a Monte Carlo target."""
    kept = [n for n in nodes if not np.isnan(n.value_target)]
    return [n.state for n in kept], np.array([n.value_target for n in kept], dtype=np.float32)
