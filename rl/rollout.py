"""RolloutWorker: runs searches on batches of problems and returns experience records.

A plain class: actors/rollout.py wraps it in Ray from the outside, and tests use it directly.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rl.config import ImaginationConfig, LabelsConfig, RFTConfig, SearchConfig
from rl.experience import CriticExample, NodeExperience, Trajectory, experiences_from_search
from rl.grading import RuleCritic, check_rule_config
from rl.imagination import synthesize
from rl.labels import math_shepherd_labels, verified_terminals
from rl.models import Policy, ValueCritic
from rl.models.critic import load_critic
from rl.models.engine import Engine
from rl.models.weights import Weights
from rl.rft import RFTSample, sample_solutions
from rl.search import Budget, Models, build_search, greedy_batch
from rl.search.stats import SearchStats, tree_stats
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
    solution: str = ""             # the steps the method chose (the dashboard's sample table shows them)


@dataclass
class RolloutBatch:
    """What one search call returns to the driver or the replay buffer."""
    nodes: list[NodeExperience] = field(default_factory=list)
    trajectories: list[Trajectory] = field(default_factory=list)
    records: list[EvalRecord] = field(default_factory=list)  # the search's own answer per problem
    trees: list[dict] = field(default_factory=list)          # exported trees (Tree.to_json + ids), if asked
    examples: list[CriticExample] = field(default_factory=list)  # PRM (Math-Shepherd) and stronger-policy Q labels
    sent_nodes: int = 0     # node records sent straight to a replay actor (then `nodes` is empty)
    stats: list[SearchStats] = field(default_factory=list)   # diversity counts of each search's tree
    # tokens generated for the critics' labels (Math-Shepherd and stronger-policy completions, the greedy
    # solutions V learns from); the searches' own tokens are in records[i].tokens
    label_tokens: int = 0
    policy_version: int = 0
    critic_version: int = 0


LABEL_BATCH = 64


def problem_seed(seed: int, *keys) -> int:
    """A 63-bit seed from the run seed and keys (round, purpose, problem id): sha256, so stable across processes
    (Python's hash() of a str is salted per process)."""
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # completions per generate call when labelling


class RolloutWorker:
    """Holds the policy and the critics (V always, plus q / prm / orm as configured) and runs searches.

    critic_device places the critics apart from the policy (another GPU of the actor); None = device.
    critic_paths loads a critic from its own folder (a checkpoint's q/, prm/, ...); others start from
    value_path and get their weights with the first push.
    """

    def __init__(self, task: Task, search_cfg: SearchConfig, policy_path: str, value_path: str, *,
                 device: str = "auto", seed: int = 0, num_threads: int | None = None, backend: str = "hf",
                 critics: tuple[str, ...] | list[str] = (), labels: LabelsConfig | None = None,
                 critic_device: str | None = None, critic_paths: dict[str, str] | None = None,
                 threads: int = 1, critic_model: str = "generative", stream: int = 0,
                 rollout_policy_path: str | None = None):
        if num_threads:
            torch.set_num_threads(num_threads)
        self.task = task
        self.search_cfg = search_cfg
        self.labels = labels or LabelsConfig()
        backends = {"hf": Policy, "engine": Engine}
        if backend not in backends:
            raise ValueError(f"model.backend = {backend!r}: use one of {', '.join(backends)}")
        if threads > 1 and backend != "engine":
            raise ValueError(f"rollout.search_threads = {threads} needs model.backend = engine (the "
                             "transformers backend neither batches across threads nor is safe to share)")
        self.threads = threads
        self.policy = backends[backend].from_pretrained(policy_path, device=device)
        # ηMCTS's fast rollouts come from this smaller policy when model.rollout_policy is set (else the policy)
        self.rollout_policy = (None if rollout_policy_path is None
                               else backends[backend].from_pretrained(rollout_policy_path, device=device))
        paths = {"value": value_path, **(critic_paths or {})}
        # a critic that starts from the policy folder is what learner.critic_model says (V, PRM and ORM
        # generative verifiers or scalar heads; Q always a head); a critic's own folder says what it is
        def kind(name: str, path: str) -> str | None:
            return ("head" if name == "q" else critic_model) if Path(path) == Path(policy_path) else None
        self.critics = {name: load_critic(path, kind(name, path), tokenizer_path=policy_path,
                                          device=critic_device or device)
                        for name, path in ((n, paths.get(n, value_path)) for n in ("value", *critics))}
        self.stronger = None  # Q*'s "completion by a stronger policy" labeller, loaded when configured
        if "q" in critics and self.labels.q_source == "stronger":
            if not self.labels.stronger_policy:
                raise ValueError("labels.q_source = 'stronger' needs labels.stronger_policy (a HF model folder)")
            self.stronger = Policy.from_pretrained(self.labels.stronger_policy, device=device)
        check_rule_config(task, search_cfg)  # a task without a rule-based utility fails here, before any work
        # every search draws from its own generator, seeded from (seed, policy version, purpose, problem id):
        # the same seed gives the same records whichever worker searches a problem, in whatever chunk or
        # order. self.rng (stream = the actor's index) is left for labels drawn across a chunk (PRM, RFT).
        self.seed = seed
        self.rng = np.random.default_rng([seed, stream])
        self.pid = os.getpid()
        self.label_tokens = 0  # generated for critic labels so far (RolloutBatch.label_tokens: one call's share)

    @property
    def value(self) -> ValueCritic:
        return self.critics["value"]

    def rule_critics(self) -> dict[str, RuleCritic]:
        """The critic roles search.rule_critics gives to the task's rule-based utility (they have no weights)."""
        return {kind: RuleCritic(self.task, kind) for kind in self.search_cfg.rule_critics}

    def models(self, reward=None) -> Models:
        c = {**self.critics, **self.rule_critics()}
        return Models(policy=self.policy, value=c["value"], reward=reward, prm=c.get("prm"), orm=c.get("orm"),
                      q=c.get("q"), rollout_policy=self.rollout_policy)

    # ---- searching -------------------------------------------------------------------
    def search(self, problems: list[Problem], *, use_reward: bool = True, export_trees: int = 0) -> RolloutBatch:
        """Run the configured search on each problem; use_reward lets it score terminals with the verifier.

        The trees of the first `export_trees` problems come back as plain JSON for viewing and logging.
        """
        method = build_search(self.search_cfg.method, self.search_cfg)
        reward = self.task.reward if use_reward and self.search_cfg.reward == "verifier" else None
        models = self.models(reward)
        budget = Budget(max_tokens=self.search_cfg.max_tokens)
        out = RolloutBatch(policy_version=self.policy.version, critic_version=self.value.version)
        label_tokens_before = self.label_tokens
        searched = []
        purpose = "train" if use_reward else "search"
        for p, res in zip(problems, self._run_searches(method, problems, models, budget, purpose)):
            if use_reward:  # label the tree's terminals for training, whatever the search scored them with
                for i in range(res.tree.size):
                    if res.tree.terminal[i] and np.isnan(res.tree.reward[i]):
                        res.tree.reward[i] = self.task.reward(p, res.tree.steps(i))
            nodes, traj = experiences_from_search(p.id, res, policy_version=self.policy.version,
                                                  critic_version=self.value.version)
            if self.labels.sft_filter == "orm":
                traj = self.orm_trajectory(p, res)
            out.nodes += nodes
            if traj is not None:
                out.trajectories.append(traj)
            if self.labels.sft_filter == "verifier" and self.labels.sft_per_prompt > 1:
                out.trajectories += [  # the next distinct verified solutions of this tree (the best is traj)
                    Trajectory(id=f"{p.id}/v{self.policy.version}/traj{j}", problem_id=p.id, prompt=res.tree.prompt,
                               solution=res.tree.steps(i), reward=float(res.tree.reward[i]),
                               policy_version=self.policy.version, critic_version=self.value.version)
                    for j, i in enumerate(verified_terminals(res.tree, self.labels.sft_per_prompt)[1:], start=1)]
            out.records.append(self._record(p, res.answer, res.spent.generated_tokens, res.spent.seconds))
            out.stats.append(tree_stats(res.tree, self.task, p, simulations=res.spent.simulations))
            if len(out.trees) < export_trees:
                out.trees.append({**res.tree.to_json(res.chosen), "problem_id": p.id, "answer": res.answer,
                                  "gold": p.answer})
            searched.append((p, res))
        if use_reward and "prm" in self.critics and self.labels.prm_completions > 0:
            out.examples += self.prm_examples(searched)
        if use_reward and self.stronger is not None:
            out.examples += self.stronger_q_examples(searched)
        if use_reward and self.labels.value_greedy:
            out.examples += self.greedy_value_examples(problems)
        out.label_tokens = self.label_tokens - label_tokens_before
        return out

    def rft_samples(self, problems: list[Problem], cfg: RFTConfig) -> list[RFTSample]:
        """cfg.samples complete solutions per problem from the policy at cfg.temperature, each scored by the
        task's verifier (rl.rft.sample_solutions); capped like the search's solutions."""
        cap = self.search_cfg.step_max_tokens * self.search_cfg.max_depth
        return sample_solutions(problems, self.task, self.policy, n=cfg.samples, temperature=cfg.temperature,
                                max_new_tokens=cap, batch_size=cfg.batch_size, rng=self.rng,
                                policy_version=self.policy.version)

    def greedy_value_examples(self, problems: list[Problem]) -> list[CriticExample]:
        """V labels from the policy's greedy solution of each problem: (prompt + solution, verifier reward)."""
        cap = self.search_cfg.step_max_tokens * self.search_cfg.max_depth
        out = []
        for i in range(0, len(problems), GREEDY_BATCH):
            chunk = problems[i:i + GREEDY_BATCH]
            for p, r in zip(chunk, greedy_batch(chunk, self.task, self.policy, max_new_tokens=cap)):
                self.label_tokens += r.spent.generated_tokens
                out.append(CriticExample(id=f"{p.id}/v{self.policy.version}/value/greedy", problem_id=p.id,
                                         kind="value", text=self.task.prompt(p) + r.solution,
                                         target=float(self.task.reward(p, r.solution)),
                                         policy_version=self.policy.version))
        return out

    def orm_trajectory(self, p: Problem, res) -> Trajectory | None:
        """The terminal the ORM (V without an ORM) scores highest, if above labels.sft_orm_threshold.

        AlphaLLM's self-improvement without labels: the learned outcome critic, not the verifier,
        picks the solution the policy is fine-tuned on. Trajectory.reward holds that score.
        """
        tree = res.tree
        terminals = [i for i in range(1, tree.size) if tree.terminal[i]]
        if not terminals:
            return None
        scores = self.critics.get("orm", self.value).score([tree.state(i) for i in terminals])
        best = int(np.argmax(scores))
        if scores[best] <= self.labels.sft_orm_threshold:
            return None
        return Trajectory(id=f"{p.id}/v{self.policy.version}/traj", problem_id=p.id, prompt=tree.prompt,
                          solution=tree.steps(terminals[best]), reward=float(scores[best]),
                          policy_version=self.policy.version, critic_version=self.value.version)

    # ---- labels that need more generation ------------------------------------------
    def _complete_all(self, policy, prefixes: list[str], temperature: float) -> list[str]:
        cap = self.search_cfg.step_max_tokens * self.search_cfg.max_depth
        texts = []
        for i in range(0, len(prefixes), LABEL_BATCH):
            outs = policy.complete(prefixes[i:i + LABEL_BATCH], max_new_tokens=cap, temperature=temperature,
                                   seed=int(self.rng.integers(2**31)))
            self.label_tokens += sum(c.num_tokens for c in outs)
            texts += [c.text for c in outs]
        return texts

    def prm_examples(self, searched: list) -> list[CriticExample]:
        """Math-Shepherd PRM labels (Wang et al. 2024): from every step prefix on up to labels.prm_paths
        solutions of each search (its chosen one first, then other terminals at random), sample
        labels.prm_completions completions and label the step by how many reach the right answer
        (soft: the fraction; hard: any). A terminal step is labelled by its own reward."""
        L = self.labels
        jobs = []  # (problem, tree, node)
        for p, res in searched:
            tree = res.tree
            terminals = [i for i in range(1, tree.size) if tree.terminal[i]]
            others = [int(i) for i in self.rng.permutation(terminals) if i != res.chosen]
            paths = ([res.chosen] if res.chosen in terminals else []) + others
            nodes: list[int] = []
            for t in paths[:L.prm_paths]:
                nodes += [i for i in tree.path(t)[1:] if i not in nodes]
            jobs += [(p, tree, i) for i in nodes]
        open_jobs = [j for j in jobs if not j[1].terminal[j[2]]]
        prefixes = [tree.state(i) for _, tree, i in open_jobs for _ in range(L.prm_completions)]
        texts = self._complete_all(self.policy, prefixes, self.search_cfg.temperature)
        out = []
        for k, (p, tree, i) in enumerate(open_jobs):
            comps = texts[k * L.prm_completions:(k + 1) * L.prm_completions]
            hard, soft = math_shepherd_labels([[self.task.reward(p, tree.steps(i) + c) for c in comps]])
            out.append(self._example(p, "prm", tree, i, float((soft if L.prm_label == "soft" else hard)[0])))
        for p, tree, i in jobs:
            if tree.terminal[i]:
                out.append(self._example(p, "prm", tree, i, float(self.task.reward(p, tree.steps(i)))))
        return out

    def stronger_q_examples(self, searched: list) -> list[CriticExample]:
        """Q* "completion by a stronger LLM": Q(s, a) = reward of the stronger policy's greedy completion
        from every searched (s, a) (a terminal step: its own reward)."""
        jobs = [(p, res.tree, i) for p, res in searched for i in range(1, res.tree.size)]
        open_jobs = [j for j in jobs if not j[1].terminal[j[2]]]
        texts = self._complete_all(self.stronger, [tree.state(i) for _, tree, i in open_jobs], 0.0)
        done = {(id(tree), i): c for (_, tree, i), c in zip(open_jobs, texts)}
        return [self._example(p, "q", tree, i, float(self.task.reward(
                    p, tree.steps(i) + ("" if tree.terminal[i] else done[(id(tree), i)]))))
                for p, tree, i in jobs]

    def _example(self, p: Problem, kind: str, tree, node: int, target: float) -> CriticExample:
        return CriticExample(id=f"{p.id}/v{self.policy.version}/{kind}/{node}", problem_id=p.id, kind=kind,
                             text=tree.state(node), target=target, policy_version=self.policy.version)

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
                    rec.reward, rec.value, rec.solution = self.task.reward(p, r.solution), float(v), r.solution
                    recs.append(rec)
            return recs
        search = build_search(method, self.search_cfg)
        models = self.models()
        budget = Budget(max_tokens=self.search_cfg.max_tokens)
        recs = []
        for p, r in zip(problems, self._run_searches(search, problems, models, budget, f"eval/{method}")):
            recs.append(self._record(p, r.answer, r.spent.generated_tokens, r.spent.seconds))
            recs[-1].solution = r.solution
        return recs

    # ---- imagination ----------------------------------------------------------------
    def synthesize(self, seeds: list[Problem], cfg: ImaginationConfig, *, eval_index: frozenset[tuple[str, ...]],
                   seed: int) -> tuple[list[Problem], dict]:
        """New prompts rewritten from seeds by this worker's policy (rl.imagination.synthesize, AlphaLLM §4.1).

        Args:
            cfg: the templates, samples, agreement and overlap thresholds (imagination.*).
            eval_index: build_ngram_index(eval questions, cfg.ngram), the decontamination set.
            seed: seeds the sampling, so a round's rewrites do not depend on what this worker did before.
        Returns:
            (kept problems with their self-consistent answers, counts under imagination/). Solutions are
            capped like the search's (search.step_max_tokens * search.max_depth tokens).
        """
        cap = self.search_cfg.step_max_tokens * self.search_cfg.max_depth
        return synthesize(seeds, self.policy, self.task, templates=list(cfg.templates), samples=cfg.samples,
                          min_agreement=cfg.min_agreement, eval_index=eval_index, max_overlap=cfg.max_overlap,
                          n=cfg.ngram, rng=np.random.default_rng(seed), temperature=cfg.temperature,
                          question_max_tokens=cfg.question_max_tokens, solution_max_tokens=cap)

    def problem_rng(self, problem: Problem, purpose: str) -> np.random.Generator:
        """The generator of one search: a function of (run seed, policy version = the round, purpose, problem id)
        only, never of which worker runs it or what it ran before."""
        return np.random.default_rng(problem_seed(self.seed, self.policy.version, purpose, problem.id))

    def _run_searches(self, search, problems: list[Problem], models: Models, budget: Budget, purpose: str) -> list:
        """One search per problem: one after another, or `threads` at a time with the engine backend,
        whose decode loop batches the concurrent searches' requests (continuous batching). Each search
        gets its own generator (problem_rng)."""
        rngs = [self.problem_rng(p, purpose) for p in problems]
        if self.threads <= 1:
            return [search(p, self.task, models, budget, rng) for p, rng in zip(problems, rngs)]
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            return list(pool.map(lambda pr: search(pr[0], self.task, models, budget, pr[1]), zip(problems, rngs)))

    def _record(self, p: Problem, answer: str | None, tokens: int, seconds: float) -> EvalRecord:
        return EvalRecord(id=p.id, prediction=answer, gold=p.answer,
                          correct=self.task.is_correct(p, answer),
                          tokens=int(tokens), seconds=float(seconds))

    # ---- weights ---------------------------------------------------------------------
    def load_weights(self, version: int, weights: dict[str, Weights]) -> int:
        """Swap in published weights (between searches); return the version now in use."""
        missing = {"policy", *self.critics, *(["rollout_policy"] if self.rollout_policy else [])} - set(weights)
        if missing:
            raise ValueError(f"published weights (version {version}) lack {sorted(missing)}; "
                             f"they hold {sorted(weights)}")
        self.policy.load_weights(version, weights["policy"])
        if self.rollout_policy is not None:
            self.rollout_policy.load_weights(version, weights["rollout_policy"])
        for name, critic in self.critics.items():
            critic.load_weights(version, weights[name])
        return self.version()

    def version(self) -> int:
        return self.policy.version

    def weights(self) -> dict[str, Weights]:
        """The weights in use (lets a test check that a push arrived intact)."""
        return {"policy": self.policy.weights(), **{n: c.weights() for n, c in self.critics.items()},
                **({"rollout_policy": self.rollout_policy.weights()} if self.rollout_policy is not None else {})}
