"""The training controller: bootstrap, then rounds of search -> criticize -> improve -> push -> evaluate.

Everything a run needs to resume is in state_dict(), written with each checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import ray
from tqdm import tqdm

from actors.replay import ReplayActor
from actors.rollout import RolloutPool
from learners.group import LearnerGroup
from learners.learner import Learner
from launch import checkpoint as ckpt
from launch.resources import round_perf
from launch.tracking import Tracker, eval_sample_rows, format_table, phase_line, write_summary
from rl.checks import check_inputs
from rl.config import Config, ConfigError, to_dict
from rl.imagination import REWRITE_COUNTS, Curriculum, arithmetic_config_for, build_ngram_index
from rl.metrics import binary_auc, expected_calibration_error
from rl.models.embedded import build_embedded_model
from rl.rft import rft_metrics, select_verified
from rl.search.export import tree_html
from rl.search.stats import DIVERSITY_KEYS, diversity_metrics
from rl.grading import check_rule_config
from rl.tasks import build_task, load_problems
from rl.tasks.base import Problem

BOOTSTRAP_SEED_OFFSET = 10**6   # keeps bootstrap problems apart from the per-round prompt seeds
EVAL_SEED_OFFSET = 2 * 10**6
IMAGINATION_SEED_OFFSET = 3 * 10**6  # the rewriting's sampling seeds, apart from the above
REPLAY_FILE = "replay.jsonl"


ADDRESS_TIMEOUT_S = 10.0  # how long --address may take to answer before the run stops

# tests/fault's driver-kill tests only: ARBOR_KILL_AT=PHASE:ROUND makes the driver SIGKILL itself there.
KILL_AT_ENV = "ARBOR_KILL_AT"


def kill_point(phase: str, round_: int) -> None:
    """SIGKILL this process if ARBOR_KILL_AT is f"{phase}:{round_}"; a no-op when it is unset. The points:
    search (the round's first chunk of records has reached the replay actor, the rest is being searched),
    critics and policy (as that training starts), publish (trees written and logged, weights not pushed),
    checkpoint (the learner's and the replay's files are in the .partial folder, not committed), committed
    (the checkpoint renamed into place, summary.json and the round's W&B step not yet written)."""
    if os.environ.get(KILL_AT_ENV) == f"{phase}:{round_}":
        os.kill(os.getpid(), signal.SIGKILL)


def probe_address(address: str, timeout: float = ADDRESS_TIMEOUT_S) -> None:
    """Raise ConnectionError within ~timeout seconds when no Ray cluster listens at address ('auto', HOST:PORT or
    ray://HOST:PORT). ray.init on a dead address retries for minutes, so it is checked here first."""
    target = address
    if address.startswith("ray://"):
        target = address[len("ray://"):]
    else:
        from ray._private.services import canonicalize_bootstrap_address_or_die
        try:
            target = canonicalize_bootstrap_address_or_die(address)
        except ConnectionError as e:
            raise ConnectionError(f"--address {address}: no running Ray cluster found ({e})") from None
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        raise ConnectionError(f"--address {address}: no Ray cluster answers at {target} within {timeout:.0f} s "
                              f"({e})") from None


class Controller:
    def __init__(self, cfg: Config, *, resume: str = "auto", address: str | None = None, console: bool = True):
        self.cfg = cfg
        self.console = console
        self.run_dir = Path(cfg.run_dir)
        if cfg.imagination.curriculum and cfg.task.name != "arithmetic":
            raise ValueError(f"imagination.curriculum grows the arithmetic generator; task.name = {cfg.task.name!r} "
                             "has none (imagination.rewrite synthesizes prompts for language tasks)")
        if cfg.loop.method == "rft" and cfg.loop.mode != "sync":
            raise ValueError(f"loop.method = 'rft' runs in loop.mode = 'sync' only, got {cfg.loop.mode!r}")
        if cfg.loop.method == "rft" and cfg.imagination.rewrite:
            raise ValueError("loop.method = 'rft' does not rewrite prompts: set imagination.rewrite = false")
        run_dir = self.run_dir
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"run_dir = {cfg.run_dir!r} is a file, not a folder")
        self.task = build_task(cfg.task)
        check_rule_config(self.task, cfg.search)  # a rule-based utility the task lacks: named before any work
        if address:  # a cluster that is not there fails here in seconds (ray.init would retry for minutes)
            probe_address(address)
        self.eval_problems = self._eval_problems()
        # rewrites that overlap the questions evaluated on are dropped (imagination.max_overlap)
        self.eval_index = (build_ngram_index([p.question for p in self.eval_problems], cfg.imagination.ngram)
                           if cfg.imagination.rewrite else frozenset())
        self.resume_from = self._resume_point(resume)
        # model folders, tokenizer vs model, data files vs the model's context: all before Ray or run_dir
        check_inputs(cfg, self.task, self.resume_from / "policy" if self.resume_from is not None else None)
        self.round = 0            # last completed round
        self.version = 0          # last published weights version
        self.summary: list[dict] = []
        self.address = address
        self.replay = None  # the replay actor, started in setup()
        self._executor = ThreadPoolExecutor(max_workers=1)  # async mode: the next round's search
        self._prefetch: Future | None = None
        self.order: list[tuple[str, int]] = []  # ("drain", r) and ("search", r + 1) as they happen (async mode)
        self._last_search_done: float | None = None
        self.rng = np.random.default_rng(cfg.seed)

    # ---- set-up ----------------------------------------------------------------------
    def _eval_problems(self) -> list[Problem]:
        c = self.cfg
        if c.task.eval_data:
            return load_problems(c.task.eval_data)[:c.loop.eval_size]
        return self.task.generate(c.loop.eval_size, c.seed + EVAL_SEED_OFFSET, "eval")

    def train_problems(self, round_: int) -> list[Problem]:
        """Prompts of one round: a slice of train_data (cycled), or fresh generated train-split problems."""
        c = self.cfg
        n = c.loop.prompts_per_round
        if c.task.train_data:
            data = load_problems(c.task.train_data)
            start = ((round_ - 1) * n) % len(data)
            return [data[(start + i) % len(data)] for i in range(min(n, len(data)))]
        if c.imagination.curriculum:  # generated prompts at the round's difficulty levels
            im = c.imagination
            levels = Curriculum(im.start_level, im.end_level, im.ramp_rounds, im.easy_frac).levels(
                round_, n, np.random.default_rng(c.seed * 1000 + round_))
            out = []
            for level in sorted(set(levels)):
                task = build_task(dataclasses.replace(c.task, arithmetic=arithmetic_config_for(level, c.task.arithmetic)))
                out += task.generate(levels.count(level), c.seed * 1000 + round_ * 100 + level, "train")
            return out
        return self.task.generate(n, c.seed * 1000 + round_, "train")

    def _resume_point(self, resume: str) -> Path | None:
        if resume == "none":
            if ckpt.latest_checkpoint(self.run_dir) is not None:
                raise ValueError(f"run_dir {self.run_dir} already holds checkpoints; pass --resume auto "
                                 "to continue it or choose another run_dir")
            return None
        if resume == "auto":  # the newest checkpoint whose manifest verifies (a failing one is warned of, skipped)
            found = ckpt.latest_valid_checkpoint(self.run_dir)
        else:
            found = ckpt.resolve_checkpoint(resume)
        if found is not None:  # model, task or critic set changed since the checkpoint: refused, keys named
            ckpt.check_resume_config(found, to_dict(self.cfg))
        return found

    def setup(self) -> None:
        c = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.resume_from is not None:
            state = ckpt.load_loop_state(self.resume_from)
            self.load_state_dict(state)
            policy_path, value_path = str(self.resume_from / "policy"), str(self.resume_from / "value")
            rollout_path = str(self.resume_from / "rollout_policy") if c.model.rollout_policy else None
        else:
            policy_path = c.model.policy
            if policy_path == "embedded":
                policy_path = str(build_embedded_model(c.model.embedded, self.run_dir / "base", seed=c.seed))
            value_path = c.model.value or policy_path
            rollout_path = c.model.rollout_policy
            if rollout_path == "embedded":  # the same character tokenizer as the embedded policy, a smaller model
                rollout_path = str(build_embedded_model(c.model.rollout_embedded, self.run_dir / "base_rollout",
                                                        seed=c.seed + 1))
        if not ray.is_initialized():
            if not self.address:  # a local instance: keep every Ray process on loopback
                os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     **({} if self.address else {"num_cpus": max(2, int(np.ceil(
                         c.rollout.num_actors * c.rollout.num_cpus + c.learner.num_ranks * c.learner.num_cpus + 0.1)))}))
        self.replay = ReplayActor.remote(c.learner.replay_capacity, inbox_capacity=c.replay.inbox_capacity,
                                         backpressure=c.replay.backpressure)
        if self.resume_from is not None:
            ray.get(self.replay.load.remote(str(self.resume_from / REPLAY_FILE)))
        self.learner = LearnerGroup(c, policy_path, value_path, rollout_path)
        self.pool = RolloutPool(c, policy_path, value_path, rollout_path)
        if self.resume_from is not None:
            loaded = self.learner.call(Learner.load, str(self.resume_from))
            if loaded != self.version:
                raise RuntimeError(f"{self.resume_from}: learner version {loaded} != loop state {self.version}")
            if "learner_rng" in state:  # checkpoints before it: the learner's draws restart from the seed
                self.learner.call(ckpt.set_learner_rng_state, state["learner_rng"])
            self.pool.load_weights(self.version, ray.put(self.learner.call(Learner.weights)))
        self.tracker = Tracker(self.run_dir, to_dict(c), mode=c.wandb.mode, project=c.wandb.project,
                               entity=c.wandb.entity, backend=c.tracking.backend)

    # ---- state -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"round": self.round, "version": self.version, "summary": self.summary,
                "rng": self.rng.bit_generator.state, "config": to_dict(self.cfg)}

    def load_state_dict(self, state: dict) -> None:
        self.round, self.version, self.summary = state["round"], state["version"], list(state["summary"])
        self.rng.bit_generator.state = state["rng"]

    # ---- the loop --------------------------------------------------------------------
    def run(self) -> list[dict]:
        self.setup()
        if self.resume_from is not None:  # a driver killed after the last commit left summary.json a round behind
            write_summary(self.run_dir, self.summary)
        try:
            rounds = tqdm(range(self.round + (self.resume_from is not None), self.cfg.loop.rounds + 1),
                          desc="rounds", disable=not self.console, position=0)
            for r in rounds:
                self.run_round(r)
                rounds.set_postfix(greedy=self.summary[-1]["greedy_acc"], search=self.summary[-1]["search_acc"])
        finally:
            self.tracker.finish()
        if self.console:
            print(format_table(self.summary))
        return self.summary

    def run_round(self, r: int) -> dict:
        """Round 0 bootstraps the policy; later rounds search, train and push."""
        t0 = time.perf_counter()
        metrics: dict = {}
        if r == 0:
            metrics.update(self._bootstrap())
        elif self.cfg.loop.method == "rft":
            metrics.update(self._rft_and_learn(r))
        else:
            metrics.update(self._search_and_learn(r))
        # every token the policy generated for this round's training data (0 in round 0: gold solutions)
        metrics["tokens/generated"] = int(metrics.get("tokens/generated", 0))
        before = self.summary[-1].get("tokens_cumulative", 0) if self.summary else 0
        metrics["tokens/cumulative"] = int(before) + metrics["tokens/generated"]
        kill_point("publish", r)
        t_push = time.perf_counter()
        version = self.learner.publish(self.pool)
        self.version = version
        metrics["time/push"] = time.perf_counter() - t_push
        metrics.update(self._evaluate(r))
        self.round = r
        row = {"round": r, "greedy_acc": metrics["eval/greedy_acc"], "search_acc": metrics["eval/search_acc"],
               **{f"{m}_acc": metrics[f"eval/{m}_acc"] for m in self.cfg.loop.eval_methods},
               "train_solved": metrics.get("rollout/solved_frac", float("nan")), "value_ece": metrics["eval/value_ece"],
               **{f"heldout_{k[len('critic/'):]}": v for k, v in metrics.items()
                  if k.startswith("critic/") and k.endswith("_ece")},
               **{f"auc_within_{k[len('critic/'):-len('_auc_within')]}": v for k, v in metrics.items()
                  if k.startswith("critic/") and k.endswith("_auc_within")},
               **{f"search_{k}": metrics[f"search/{k}"] for k in DIVERSITY_KEYS if f"search/{k}" in metrics},
               **{f"imagination_{k}": metrics[f"imagination/{k}"] for k in REWRITE_COUNTS
                  if f"imagination/{k}" in metrics},
               "tokens_generated": metrics["tokens/generated"], "tokens_cumulative": metrics["tokens/cumulative"],
               "policy_version": version,
               "seconds": round(time.perf_counter() - t0, 1)}
        self.summary.append(row)
        metrics["time/round"] = row["seconds"]
        metrics.update(round_perf(metrics, self.cfg.learner.batch_size))
        self._checkpoint(r)
        kill_point("committed", r)
        write_summary(self.run_dir, self.summary)
        self.tracker.log(metrics, step=r)
        if self.console:
            tqdm.write(phase_line(r, self.cfg.loop.rounds, metrics,
                                  [row["seconds"] for row in self.summary if row["round"] > 0]))
        self.last_metrics = metrics  # every metric of the last round, as logged (for tests and benches)
        return row

    def _bootstrap(self) -> dict:
        b = self.cfg.bootstrap
        if b.steps == 0:
            return {}
        probs = self.task.generate(b.examples, self.cfg.seed + BOOTSTRAP_SEED_OFFSET, "train")
        prompts = [self.task.prompt(p) for p in probs]
        m = self.learner.call(Learner.train_policy, prompts, [p.solution for p in probs], steps=b.steps, lr=b.lr)
        if self.cfg.model.value is None:  # the critics start from the bootstrapped backbone
            self.learner.call(Learner.init_value_from_policy)
        # the bootstrap's solutions are right by construction: the generative critics' first verified set
        self.learner.call(Learner.add_verified, [q + p.solution for q, p in zip(prompts, probs)])
        return {f"bootstrap/{k.split('/')[-1]}": v for k, v in m.items()}

    def _imagine(self, r: int, problems: list[Problem]) -> tuple[list[Problem], dict]:
        """Round r's rewritten prompts (imagination.rewrite): one rollout actor's policy rewrites the first
        imagination.seeds_per_round of the round's prompts; returns the kept ones and the counts."""
        im = self.cfg.imagination
        t0 = time.perf_counter()
        kept, counts = self.pool.synthesize(problems[:im.seeds_per_round], im, eval_index=self.eval_index,
                                            seed=self.cfg.seed * 1000 + r + IMAGINATION_SEED_OFFSET)
        return kept, {**counts, "time/imagination": time.perf_counter() - t0}

    def _search(self, r: int) -> dict:
        """Rollout actors search round r's prompts (with the kept rewrites, under imagination.rewrite) and
        stream their nodes to the replay actor."""
        problems, imagined = self.train_problems(r), {}
        if self.cfg.imagination.rewrite:
            kept, imagined = self._imagine(r, problems)
            problems = problems + kept
        t0 = time.perf_counter()
        bar = tqdm(total=len(problems), desc=f"round {r} search", leave=False, disable=not self.console, position=1)

        def progress(n: int) -> None:
            bar.update(n)
            kill_point("search", r)
        batches = self.pool.search(problems, progress=progress, export_trees=1 if self.cfg.loop.log_trees else 0,
                                   replay=self.replay)
        bar.close()
        return {"problems": problems, "batches": batches, "started_at": t0, "done_at": time.perf_counter(),
                "imagination": imagined}

    def _searched(self, r: int) -> tuple[dict, dict]:
        """Round r's search: run now (sync), or collected from the background (async), where the next
        round's search is started at once so the actors keep searching while the learner trains.

        time/rollout_idle: the gap between the actors finishing one round's prompts and getting the next
        (sync: the learner's training, the push and the evaluation); time/learner_idle: how long the
        learner waited for experience (async)."""
        c = self.cfg
        metrics = {}
        if c.loop.mode == "sync":
            found = self._search(r)
            found["nodes_ref"] = self._drain(r)
            if self._last_search_done is not None:
                metrics["time/rollout_idle"] = found["started_at"] - self._last_search_done
        else:
            t0 = time.perf_counter()
            found = self._prefetch.result() if self._prefetch is not None else self._search(r)
            metrics["time/learner_idle"] = time.perf_counter() - t0
            # drained before round r+1's search starts, so that none of its records is trained in round r
            found["nodes_ref"] = self._drain(r)
            if r < c.loop.rounds:
                self.order.append(("search", r + 1))
                self._prefetch = self._executor.submit(self._search, r + 1)
                metrics["time/rollout_idle"] = time.perf_counter() - found["done_at"]
            else:
                self._prefetch = None
        self._last_search_done = found["done_at"]
        metrics["time/search"] = found["done_at"] - found["started_at"]
        return found, metrics

    def _drain(self, r: int):
        """Every record that reached the replay actor since the last drain, as an object ref (waited on)."""
        ref = self.replay.drain_new.remote()
        ray.wait([ref])
        self.order.append(("drain", r))
        return ref

    def _search_and_learn(self, r: int) -> dict:
        """The round's records go from the replay actor to the learner ranks by object ref (not through the
        driver); the learner trains the critics on them, then the policy on the best trajectories."""
        c = self.cfg
        found, metrics = self._searched(r)
        batches, problems = found["batches"], found["problems"]
        metrics.update(found["imagination"])
        nodes_ref = found["nodes_ref"]  # every record that arrived since the last round
        stale = c.learner.value_max_staleness
        value_ref = None if stale == 0 else self.replay.records.remote(stale, self.version)
        max_staleness = c.loop.max_staleness if c.loop.mode == "async" else None
        examples = [e for b in batches for e in b.examples]
        kill_point("critics", r)
        metrics.update(self.learner.call(Learner.train_critics, value_ref, nodes_ref, examples, c.labels,
                                         max_staleness))
        trajs = [t for b in batches for t in b.trajectories
                 if max_staleness is None or self.version - t.policy_version <= max_staleness]
        metrics["async/dropped_trajectories"] = sum(len(b.trajectories) for b in batches) - len(trajs)
        kill_point("policy", r)
        metrics.update(self.learner.call(Learner.train_policy, [t.prompt for t in trajs], [t.solution for t in trajs]))
        if c.learner.dpo:
            metrics.update(self.learner.call(Learner.train_policy_dpo, nodes_ref, min_gap=c.labels.dpo_min_gap,
                                             beta=c.learner.dpo_beta, epochs=c.learner.dpo_epochs))
        self._save_trees(r, [t for b in batches for t in b.trees][:c.loop.log_trees])
        records = [rec for b in batches for rec in b.records]
        search_tokens, label_tokens = sum(rec.tokens for rec in records), sum(b.label_tokens for b in batches)
        metrics.update({
            "rollout/search_tokens": search_tokens, "rollout/label_tokens": label_tokens,
            "tokens/generated": search_tokens + label_tokens,
            "rollout/solved_frac": len({t.problem_id for t in trajs}) / len(problems),
            "rollout/sft_trajectories": len(trajs),
            "rollout/search_acc": float(np.mean([rec.correct for rec in records])),
            "rollout/nodes": sum(b.sent_nodes for b in batches), "rollout/critic_examples": len(examples),
            "rollout/tokens_per_problem": float(np.mean([rec.tokens for rec in records])),
            "rollout/policy_versions": len({b.policy_version for b in batches}),
            **diversity_metrics([s for b in batches for s in b.stats]),
            **({"imagination/level": Curriculum(c.imagination.start_level, c.imagination.end_level,
                                                 c.imagination.ramp_rounds, c.imagination.easy_frac).level(r)}
               if c.imagination.curriculum and not c.task.train_data else {}),
            "rollout/stale_nodes": sum(b.sent_nodes for b in batches if max_staleness is not None
                                       and self.version - b.policy_version > max_staleness),
            **ray.get(self.replay.metrics.remote()),
            "perf/problems_per_s": len(problems) / metrics["time/search"]})
        return metrics

    def _rft_and_learn(self, r: int) -> dict:
        """An RFT round (loop.method: rft): the rollout actors sample rft.samples solutions per prompt of round
        r, the verified ones (deduplicated, rft.max_per_prompt per prompt) fine-tune the policy by the same
        Learner.train_policy as the search loop. No critic is trained; the kept samples go to
        run_dir/rft/round_<r>.jsonl."""
        c = self.cfg
        problems = self.train_problems(r)
        t0 = time.perf_counter()
        bar = tqdm(total=len(problems), desc=f"round {r} rft", leave=False, disable=not self.console, position=1)
        samples = self.pool.rft_samples(problems, c.rft, progress=bar.update)
        bar.close()
        metrics = {"time/search": time.perf_counter() - t0}
        if self._last_search_done is not None:
            metrics["time/rollout_idle"] = t0 - self._last_search_done
        self._last_search_done = time.perf_counter()
        kept = select_verified(samples, max_per_prompt=c.rft.max_per_prompt)
        out = self.run_dir / "rft"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"round_{r:04d}.jsonl").write_text("".join(json.dumps(dataclasses.asdict(s)) + "\n" for s in kept))
        metrics.update(rft_metrics(samples, kept, len(problems)))
        metrics.update(self.learner.call(Learner.train_policy, [s.prompt for s in kept], [s.solution for s in kept]))
        metrics["perf/problems_per_s"] = len(problems) / metrics["time/search"]
        return metrics

    def _save_trees(self, r: int, trees: list[dict]) -> None:
        """HTML and JSON of a few search trees per round, on disk and in W&B."""
        out = self.run_dir / "trees" / f"round_{r:04d}"
        out.mkdir(parents=True, exist_ok=True)
        pages = {}
        for i, t in enumerate(trees):
            page = tree_html(t, title=f"round {r} · {t['problem_id']}")
            (out / f"{t['problem_id']}.html").write_text(page)
            (out / f"{t['problem_id']}.json").write_text(json.dumps(t))
            pages[f"search/tree_{i}"] = page
        self.tracker.log_html(pages, step=r)

    def _evaluate(self, r: int) -> dict:
        c = self.cfg
        t0 = time.perf_counter()
        greedy = self.pool.evaluate(self.eval_problems, "greedy")
        self.tracker.log_samples(eval_sample_rows(self.eval_problems, greedy, 8), step=r)
        t1 = time.perf_counter()
        sub = self.eval_problems[:c.loop.eval_search_size]
        bar = tqdm(total=len(sub), desc=f"round {r} eval {c.search.method}", leave=False,
                   disable=not self.console, position=1)
        searched = self.pool.evaluate(sub, c.search.method, progress=bar.update)
        bar.close()
        more = {}
        for m in c.loop.eval_methods:
            t_m = time.perf_counter()
            recs = searched if m == c.search.method else self.pool.evaluate(sub, m)
            more.update({f"eval/{m}_acc": float(np.mean([x.correct for x in recs])),
                         f"eval/{m}_tokens": float(np.mean([x.tokens for x in recs])),
                         f"time/eval_{m}": time.perf_counter() - t_m})
        rewards = np.array([x.reward for x in greedy])
        values = np.array([x.value for x in greedy])
        return {"eval/greedy_acc": float(np.mean([x.correct for x in greedy])),
                # the value critic on the greedy solutions, against the task's reward of each
                "eval/value_ece": expected_calibration_error(values, rewards),
                "eval/value_auc": binary_auc(values, rewards),
                "eval/search_acc": float(np.mean([x.correct for x in searched])),
                "eval/greedy_tokens": float(np.mean([x.tokens for x in greedy])),
                "eval/search_tokens": float(np.mean([x.tokens for x in searched])),
                "time/eval_greedy": t1 - t0, "time/eval_search": time.perf_counter() - t1, **more}

    def _checkpoint(self, r: int) -> Path:
        staging = ckpt.staging_dir(self.run_dir, r)
        try:
            self.learner.call(Learner.save, str(staging))
            ray.get(self.replay.save.remote(str(staging / REPLAY_FILE)))
        except Exception as e:  # a full disk in a learner or the replay actor: no partial folder stays behind
            raise ckpt.failed_write(staging, e, ckpt.latest_checkpoint(self.run_dir)) from e
        kill_point("checkpoint", r)
        return ckpt.commit(staging, {**self.state_dict(), "learner_rng": self.learner.call(ckpt.learner_rng_state)})
