"""RolloutWorker: runs searches on batches of problems and returns experience records.

A plain class: actors/rollout.py wraps it in Ray from the outside, and tests use it directly.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from rl.config import SearchConfig
from rl.experience import NodeExperience, Trajectory, experiences_from_search
from rl.models import Policy, ValueCritic
from rl.models.engine import Engine
from rl.models.weights import Weights
from rl.search import Budget, Models, build_search, greedy_batch
from rl.tasks.base import Problem, Task

GREEDY_BATCH = 64  # problems per batched greedy generate


@dataclass
class EvalRecord:
    id: str
    prediction: str | None
    gold: str
    correct: bool
    tokens: int        # generated tokens spent on this problem
    seconds: float
    reward: float = float("nan")   # the task's reward of the whole solution (working checked too)
    value: float = float("nan")    # V(prompt + solution): the critic's own estimate, for calibration


@dataclass
class RolloutBatch:
    """What one search call returns to the driver or the replay buffer."""
    nodes: list[NodeExperience] = field(default_factory=list)
    trajectories: list[Trajectory] = field(default_factory=list)
    records: list[EvalRecord] = field(default_factory=list)  # the search's own answer per problem
    trees: list[dict] = field(default_factory=list)          # exported trees (Tree.to_json + ids), if asked
    policy_version: int = 0
    critic_version: int = 0


class RolloutWorker:
    def __init__(self, task: Task, search_cfg: SearchConfig, policy_path: str, value_path: str, *,
                 device: str = "auto", seed: int = 0, num_threads: int | None = None, backend: str = "hf"):
        if num_threads:
            torch.set_num_threads(num_threads)
        self.task = task
        self.search_cfg = search_cfg
        backends = {"hf": Policy, "engine": Engine}
        if backend not in backends:
            raise ValueError(f"model.backend = {backend!r}: use one of {', '.join(backends)}")
        self.policy = backends[backend].from_pretrained(policy_path, device=device)
        self.value = ValueCritic.from_pretrained(value_path, tokenizer_path=policy_path, device=device)
        self.rng = np.random.default_rng(seed)
        self.pid = os.getpid()

    # ---- searching -------------------------------------------------------------------
    def search(self, problems: list[Problem], *, use_reward: bool = True, export_trees: int = 0) -> RolloutBatch:
        """Run the configured search on each problem; use_reward lets it score terminals with the verifier.

        The trees of the first `export_trees` problems come back as plain JSON for viewing and logging.
        """
        method = build_search(self.search_cfg.method, self.search_cfg)
        reward = self.task.reward if use_reward and self.search_cfg.reward == "verifier" else None
        models = Models(policy=self.policy, value=self.value, reward=reward)
        budget = Budget(max_tokens=self.search_cfg.max_tokens)
        out = RolloutBatch(policy_version=self.policy.version, critic_version=self.value.version)
        for p in problems:
            res = method(p, self.task, models, budget, self.rng)
            if use_reward:  # label the tree's terminals for training, whatever the search scored them with
                for i in range(res.tree.size):
                    if res.tree.terminal[i] and np.isnan(res.tree.reward[i]):
                        res.tree.reward[i] = self.task.reward(p, res.tree.steps(i))
            nodes, traj = experiences_from_search(p.id, res, policy_version=self.policy.version,
                                                  critic_version=self.value.version)
            out.nodes += nodes
            if traj is not None:
                out.trajectories.append(traj)
            out.records.append(self._record(p, res.answer, res.spent.generated_tokens, res.spent.seconds))
            if len(out.trees) < export_trees:
                out.trees.append({**res.tree.to_json(res.chosen), "problem_id": p.id, "answer": res.answer,
                                  "gold": p.answer})
        return out

    def evaluate(self, problems: list[Problem], method: str) -> list[EvalRecord]:
        """Answers without labels: greedy is batched across problems, other methods search one by one."""
        if method == "greedy":
            cap = self.search_cfg.step_max_tokens * self.search_cfg.max_depth
            recs = []
            for i in range(0, len(problems), GREEDY_BATCH):
                chunk = problems[i:i + GREEDY_BATCH]
                results = greedy_batch(chunk, self.task, self.policy, max_new_tokens=cap)
                values = self.value.score([self.task.prompt(p) + r.solution for p, r in zip(chunk, results)])
                for p, r, v in zip(chunk, results, values):
                    rec = self._record(p, r.answer, r.spent.generated_tokens, r.spent.seconds)
                    rec.reward, rec.value = self.task.reward(p, r.solution), float(v)
                    recs.append(rec)
            return recs
        search = build_search(method, self.search_cfg)
        models = Models(policy=self.policy, value=self.value, reward=None)
        budget = Budget(max_tokens=self.search_cfg.max_tokens)
        recs = []
        for p in problems:
            r = search(p, self.task, models, budget, self.rng)
            recs.append(self._record(p, r.answer, r.spent.generated_tokens, r.spent.seconds))
        return recs

    def _record(self, p: Problem, answer: str | None, tokens: int, seconds: float) -> EvalRecord:
        return EvalRecord(id=p.id, prediction=answer, gold=p.answer,
                          correct=self.task.is_correct(p, answer),
                          tokens=int(tokens), seconds=float(seconds))

    # ---- weights ---------------------------------------------------------------------
    def load_weights(self, version: int, weights: dict[str, Weights]) -> int:
        """Swap in published weights (between searches); return the version now in use."""
        self.policy.load_weights(version, weights["policy"])
        self.value.load_weights(version, weights["value"])
        return self.version()

    def version(self) -> int:
        return self.policy.version

    def weights(self) -> dict[str, Weights]:
        """The weights in use (lets a test check that a push arrived intact)."""
        return {"policy": self.policy.weights(), "value": self.value.weights()}
