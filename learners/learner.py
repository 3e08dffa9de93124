"""The learner: DeepSpeed engines for the policy (SFT) and the critics V, Q, PRM, ORM (BCE on labels).

A plain class (Ray wraps it in learners/group.py). One instance is one rank
of a data-parallel group: every rank draws the same global batch (same seed) and trains on its own
slice of it, DeepSpeed averages the gradients. Losses and batches come from rl/losses.py, labels
from rl/labels.py.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import deepspeed
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import torch.distributed as dist

from learners.dist import init_group
from learners.critic_round import train_critics
from rl.config import LabelsConfig, LearnerConfig
from rl.labels import QTransitions, fqi_targets, step_preference_pairs
from rl.losses import dpo_loss, sequence_logprobs, sft_batch, sft_loss, value_batch, value_loss
from rl.models.critic import (folder_kind, last_token_logits, load_generative_model, load_value_model, split_state,
                              verifier_logprobs)
from rl.models.device import pick_device
from rl.models.weights import Weights, to_numpy
from rl.transport import bind_free_port


def micro_batch(cfg: LearnerConfig, world_size: int) -> int:
    """Per-rank micro batch: learner.batch_size is the global batch, split over ranks and accumulation steps."""
    parts = world_size * cfg.grad_accum
    if cfg.batch_size % parts:
        raise ValueError(f"learner.batch_size = {cfg.batch_size} must be a multiple of learner ranks x "
                         f"learner.grad_accum = {world_size} x {cfg.grad_accum}")
    return cfg.batch_size // parts


def ds_config(cfg: LearnerConfig, on_gpu: bool, world_size: int = 1) -> dict:
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if cfg.zero3_persistence_threshold is not None:
        zero["stage3_param_persistence_threshold"] = cfg.zero3_persistence_threshold
    return {
        "train_micro_batch_size_per_gpu": micro_batch(cfg, world_size),
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
        # the client optimizer is torch AdamW (no fused-Adam build); offload then runs it on the CPU copy
        "zero_force_ds_cpu_optimizer": False,
        "bf16": {"enabled": on_gpu and torch.cuda.is_bf16_supported()},  # fp32 on CPU
        "steps_per_print": 10**9,
    }


class Learner:
    """One learner rank. rank 0 of a 1-rank group needs no address: it binds a loopback port itself.

    For M ranks (learners/group.py), rank 0's listening socket is made first (`listen_socket`) and its
    address handed to every rank; all ranks then construct concurrently and meet in init_group.
    """

    def __init__(self, cfg: LearnerConfig, policy_path: str, value_path: str, *, seed: int = 0,
                 num_threads: int | None = None, rank: int = 0, world_size: int = 1,
                 master: tuple[str, int] | None = None, listen_socket=None, rollout_path: str | None = None):
        if num_threads:
            torch.set_num_threads(num_threads)
        if cfg.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"learner.zero_stage = {cfg.zero_stage}: use 0, 1, 2 or 3")
        micro_batch(cfg, world_size)  # fail before any model loads
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.device = pick_device()
        if master is None:
            if world_size != 1:
                raise ValueError("a learner group of several ranks needs rank 0's address (master)")
            listen_socket = bind_free_port()
            master = ("127.0.0.1", listen_socket.getsockname()[1])
        self._sock = listen_socket  # kept open: the store listens on it
        init_group(rank, world_size, master[0], master[1], listen_socket)
        self.seed = seed
        self.version = 0
        self.rng = np.random.default_rng(seed)  # same seed on every rank: the same global batches
        self.tokenizer = AutoTokenizer.from_pretrained(policy_path)
        self.tokenizer.padding_side = "right"
        self.policy = self._engine(AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32), cfg.policy_lr)
        # the fast-rollout policy (model.rollout_policy): a smaller LM trained on the policy's SFT data
        self.rollout = (None if rollout_path is None else
                        self._engine(AutoModelForCausalLM.from_pretrained(rollout_path, dtype=torch.float32),
                                     cfg.policy_lr))
        # verified solutions (prompt + steps) of the training problems so far: what generative critics learn
        self.verified: dict[str, None] = {}
        # the critics: V always, then learner.critics (learner.critic_model: generative LMs or scalar heads)
        self.critics = {name: self._engine(self._critic_model(value_path, name), self._lr(name))
                        for name in ("value", *cfg.critics)}

    def _critic_model(self, path: str | Path, name: str):
        """A scalar-head model whose new head depends only on (seed, critic, version), not on what ran before."""
        torch.manual_seed(self.seed * 1000 + ("value", "q", "prm", "orm").index(name) * 100 + self.version)
        if self.is_generative(name):
            if folder_kind(path) != "generative":
                raise ValueError(f"{path}: a scalar-head critic folder, but learner.critic_model = generative "
                                 f"needs a causal LM (set model.value: null, or learner.critic_model: head)")
            return load_generative_model(path)
        return load_value_model(path)

    def is_generative(self, name: str) -> bool:
        """Whether critic `name` is a generative verifier (learner.critic_model; Q is always a head)."""
        return self.cfg.critic_model == "generative" and name != "q"

    @property
    def value(self):
        return self.critics["value"]

    def _lr(self, name: str) -> float:
        return self.cfg.value_lr if name == "value" else self.cfg.critic_lr

    def _engine(self, model, lr: float):
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)  # torch AdamW: no fused-Adam build
        engine, *_ = deepspeed.initialize(model=model, optimizer=opt,
                                          config=ds_config(self.cfg, self.device.type == "cuda", self.world_size))
        return engine

    # ---- training --------------------------------------------------------------------
    def _fit(self, engine, n: int, make_batch, loss_fn, *, epochs: int, steps: int | None, lr: float | None) -> list[float]:
        """Minibatch training over n items for epochs (or exactly `steps` steps); returns per-step losses."""
        saved_lr = [g["lr"] for g in engine.optimizer.param_groups]
        if lr is not None:  # a one-off rate (the bootstrap's), restored below
            for g in engine.optimizer.param_groups:
                g["lr"] = lr
        bs = self.cfg.batch_size  # global batch: every rank draws the same one and takes its slice
        micro = micro_batch(self.cfg, self.world_size)
        total = steps if steps is not None else epochs * max(1, -(-n // bs))
        order, losses = np.array([], dtype=int), []
        engine.train()
        for _ in range(total):
            while len(order) < bs:  # always a full global batch, so every rank has equal micro-batches
                order = np.concatenate([order, self.rng.permutation(n)])
            idx, order = order[:bs], order[bs:]
            mine = idx.reshape(self.cfg.grad_accum, self.world_size, micro)[:, self.rank]  # [accum, micro]
            step_loss = 0.0
            for part in mine:  # DeepSpeed steps the optimizer on the last micro-batch of the accumulation
                batch = {k: v.to(engine.device) for k, v in make_batch(part).items()}
                loss = loss_fn(engine, batch)
                engine.backward(loss)
                engine.step()
                step_loss += float(loss.detach()) / self.cfg.grad_accum
            losses.append(self._mean_over_ranks(step_loss))
        for g, old in zip(engine.optimizer.param_groups, saved_lr):
            g["lr"] = old
        return losses

    def _mean_over_ranks(self, x: float) -> float:
        if self.world_size == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def train_policy(self, prompts: list[str], completions: list[str], *, epochs: int | None = None,
                     steps: int | None = None, lr: float | None = None) -> dict:
        """SFT on (prompt, completion) pairs; the loss covers the completion and its EOS. The fast-rollout
        policy, when there is one, learns the same pairs the same way (learner/rollout_policy_loss)."""
        t0 = time.perf_counter()
        if not prompts:
            return {"learner/policy_steps": 0}
        fit = dict(epochs=self.cfg.policy_epochs if epochs is None else epochs, steps=steps, lr=lr)
        make_batch = lambda idx: sft_batch(self.tokenizer, [prompts[i] for i in idx], [completions[i] for i in idx],  # noqa: E731
                                           self.cfg.max_seq_len)
        loss_fn = lambda eng, b: sft_loss(eng(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,  # noqa: E731
                                          b["labels"])
        losses = self._fit(self.policy, len(prompts), make_batch, loss_fn, **fit)
        out = {"learner/policy_loss": float(np.mean(losses[-max(1, len(losses) // 4):])),
               "learner/policy_loss_first": losses[0], "learner/policy_steps": len(losses),
               "learner/policy_examples": len(prompts), "time/policy_train": time.perf_counter() - t0}
        if self.rollout is not None:
            t1 = time.perf_counter()
            r_losses = self._fit(self.rollout, len(prompts), make_batch, loss_fn, **fit)
            out.update({"learner/rollout_policy_loss": float(np.mean(r_losses[-max(1, len(r_losses) // 4):])),
                        "learner/rollout_policy_loss_first": r_losses[0],
                        "time/rollout_policy_train": time.perf_counter() - t1})
        return out

    def train_policy_dpo(self, nodes: list, *, min_gap: float, beta: float, epochs: int = 1) -> dict:
        """Step-level DPO on sibling steps of this round's trees with clearly different values.

        The reference policy is this policy as it enters the call: its log-probabilities of every
        pair are computed once, before any update.
        """
        t0 = time.perf_counter()
        pairs = step_preference_pairs(nodes, min_gap=min_gap)
        if not pairs:
            return {"learner/dpo_pairs": 0}
        prefixes, chosen, rejected = (list(x) for x in zip(*pairs))

        def batch(idx):
            c = sft_batch(self.tokenizer, [prefixes[i] for i in idx], [chosen[i] for i in idx], self.cfg.max_seq_len, eos=False)
            r = sft_batch(self.tokenizer, [prefixes[i] for i in idx], [rejected[i] for i in idx], self.cfg.max_seq_len, eos=False)
            return {**{f"c_{k}": v for k, v in c.items()}, **{f"r_{k}": v for k, v in r.items()}}

        def logps(eng, b):
            run = lambda p: sequence_logprobs(eng(input_ids=b[f"{p}_input_ids"],  # noqa: E731
                                                  attention_mask=b[f"{p}_attention_mask"]).logits, b[f"{p}_labels"])
            return run("c"), run("r")

        self.policy.eval()
        with torch.no_grad():
            ref = [logps(self.policy, {k: v.to(self.policy.device) for k, v in batch(np.arange(i, min(i + 64, len(pairs)))).items()})
                   for i in range(0, len(pairs), 64)]
        ref_c = torch.cat([r[0] for r in ref]).cpu()
        ref_r = torch.cat([r[1] for r in ref]).cpu()

        def make_batch(idx):
            return {**batch(idx), "ref_c": ref_c[idx], "ref_r": ref_r[idx]}

        def loss_fn(eng, b):
            pc, pr = logps(eng, b)
            return dpo_loss(pc, pr, b["ref_c"], b["ref_r"], beta=beta)

        losses = self._fit(self.policy, len(pairs), make_batch, loss_fn, epochs=epochs, steps=None, lr=None)
        return {"learner/dpo_loss": float(np.mean(losses[-max(1, len(losses) // 4):])),
                "learner/dpo_loss_first": losses[0], "learner/dpo_pairs": len(pairs),
                "time/dpo_train": time.perf_counter() - t0}

    def train_value(self, states: list[str], targets: np.ndarray, *, epochs: int | None = None) -> dict:
        """BCE of V(s) against Monte Carlo targets in [0, 1]."""
        return self.train_critic("value", states, targets, epochs=epochs)

    def train_critic(self, name: str, texts: list[str], targets: np.ndarray, *, epochs: int | None = None) -> dict:
        """BCE of critic `name` (sigmoid of its last-token logit) against targets in [0, 1]."""
        t0 = time.perf_counter()
        if not texts:
            return {f"learner/{name}_steps": 0}
        engine = self._critic(name)
        if self.is_generative(name):
            raise ValueError(f"critic {name!r} is generative (learner.critic_model): it learns verified "
                             "solutions by train_verifier, not targets")
        y = torch.as_tensor(np.asarray(targets, dtype=np.float32))

        def make_batch(idx):
            b = value_batch(self.tokenizer, [texts[i] for i in idx], self.cfg.max_seq_len)
            b["targets"] = y[idx]
            return b

        if epochs is None:
            epochs = self.cfg.value_epochs if name == "value" else self.cfg.critic_epochs
        losses = self._fit(
            engine, len(texts), make_batch,
            lambda eng, b: value_loss(last_token_logits(eng, b["input_ids"], b["attention_mask"]), b["targets"]),
            epochs=epochs, steps=None, lr=None)
        return {f"learner/{name}_loss": float(np.mean(losses[-max(1, len(losses) // 4):])),
                f"learner/{name}_loss_first": losses[0], f"learner/{name}_steps": len(losses),
                f"learner/{name}_examples": len(texts), f"time/{name}_train": time.perf_counter() - t0}

    def add_verified(self, states: list[str]) -> int:
        """Keep verified solutions (prompt + steps, reward 1) for the generative critics; returns how many
        distinct ones are kept now. Part of the checkpoint."""
        self.verified.update(dict.fromkeys(states))
        return len(self.verified)

    def train_verifier(self, name: str, *, steps: int | None = None) -> dict:
        """SFT of generative critic `name` on every verified solution so far (steps, then EOS), for
        learner.verifier_steps steps: what it learns is what a right solution looks like."""
        t0 = time.perf_counter()
        if not self.verified:
            return {f"learner/{name}_steps": 0}
        texts = list(self.verified)
        prompts, sols = zip(*(split_state(t) for t in texts))
        losses = self._fit(
            self._critic(name), len(texts),
            lambda idx: sft_batch(self.tokenizer, [prompts[i] for i in idx], [sols[i] for i in idx], self.cfg.max_seq_len),
            lambda eng, b: sft_loss(eng(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"]),
            epochs=1, steps=self.cfg.verifier_steps if steps is None else steps, lr=None)
        return {f"learner/{name}_loss": float(np.mean(losses[-max(1, len(losses) // 4):])),
                f"learner/{name}_loss_first": losses[0], f"learner/{name}_steps": len(losses),
                f"learner/{name}_examples": len(texts), f"time/{name}_train": time.perf_counter() - t0}

    def train_q_fqi(self, data: QTransitions, *, iterations: int, gamma: float, epochs: int | None = None) -> dict:
        """Fitted Q-iteration (Q* §4.1) with a target network, on one batch of tree transitions.

        Each iteration freezes Q as the target (its scores of every text are computed before any
        update), sets y = r + gamma * max over the next state's candidate steps of Q_target (0 at a
        terminal), records the mean squared Bellman error of the Q entering the iteration, and fits Q
        to y for `epochs`. Returns metrics with the Bellman error of each iteration.
        """
        if iterations < 1:
            raise ValueError(f"labels.fqi_iterations must be >= 1, got {iterations}")
        t0 = time.perf_counter()
        if not data.texts:
            return {"learner/q_steps": 0}
        metrics: dict = {}
        for k in range(iterations):
            q_target = self.critic_scores("q", data.texts)  # [T]: the frozen target network's values
            y = fqi_targets(data.rewards, [q_target[c] for c in data.next_candidates], data.done, gamma=gamma)
            metrics[f"learner/q_bellman_error_iter{k}"] = float(np.mean((q_target - y) ** 2))
            metrics.update(self.train_critic("q", data.texts, y, epochs=epochs))
        after = self.critic_scores("q", data.texts)
        y = fqi_targets(data.rewards, [after[c] for c in data.next_candidates], data.done, gamma=gamma)
        metrics["learner/q_bellman_error_final"] = float(np.mean((after - y) ** 2))
        metrics["time/q_train"] = time.perf_counter() - t0
        return metrics

    def train_critics(self, value_nodes: list | None, nodes: list, examples: list, labels: LabelsConfig,
                      max_staleness: int | None = None) -> dict:
        """One round of critic training from experience records (learners/critic_round.py)."""
        return train_critics(self, value_nodes, nodes, examples, labels, max_staleness)

    def _critic(self, name: str):
        if name not in self.critics:
            raise ValueError(f"critic {name!r} is not trained by this learner; add it to learner.critics "
                             f"(now: {', '.join(self.critics)})")
        return self.critics[name]

    @torch.no_grad()
    def critic_logits(self, name: str, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """[len(texts)] logits of critic `name` under the learner's current weights (of a generative
        critic: log(p / (1 - p)) of its score p)."""
        engine = self._critic(name)
        engine.eval()
        if self.is_generative(name):
            logp = np.minimum(verifier_logprobs(engine, self.tokenizer, texts, engine.device, batch_size,
                                                self.cfg.max_seq_len), -1e-9)
            return logp - np.log(-np.expm1(logp))
        out = []
        for i in range(0, len(texts), batch_size):
            b = value_batch(self.tokenizer, texts[i:i + batch_size], self.cfg.max_seq_len)
            out.append(last_token_logits(engine, b["input_ids"].to(engine.device),
                                         b["attention_mask"].to(engine.device)).float().cpu())
        return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)

    def critic_scores(self, name: str, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """[len(texts)] scores in (0, 1) of critic `name` under the learner's current weights."""
        return 1.0 / (1.0 + np.exp(-self.critic_logits(name, texts, batch_size)))

    @torch.no_grad()
    def scale_head(self, name: str, factor: float) -> None:
        """Multiply critic `name`'s scalar head (weight and bias) by factor: logit -> factor * logit.

        Temperature scaling folded into the weights (factor = 1 / T), so the saved and published critic
        is the calibrated one and nothing downstream needs to know T.
        """
        if self.is_generative(name):
            raise ValueError(f"critic {name!r} is generative (learner.critic_model): it has no head to scale")
        head = self._critic(name).module.score  # the token-classification head, Linear(hidden, 1)
        params = [head.weight, *([head.bias] if head.bias is not None else [])]
        if self.cfg.zero_stage == 3:  # partitioned: gather, edit on rank 0, re-partition
            with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
                if self.rank == 0:
                    for prm in params:
                        prm.mul_(factor)
        else:
            for prm in params:
                prm.mul_(factor)

    def value_scores(self, states: list[str]) -> np.ndarray:
        """V(s) under the learner's current weights (for held-out calibration checks)."""
        return self.critic_scores("value", states)

    # ---- weights ---------------------------------------------------------------------
    def publish(self) -> tuple[int, dict[str, Weights]]:
        """Bump the version and return it with the current weights of every model."""
        self.version += 1
        return self.version, self.weights()

    def weights(self) -> dict[str, Weights]:
        """Current weights of the policy and every critic, without a new version (used when resuming).

        Rank 0 returns them; other ranks return {} (under ZeRO-3 they still take part in the gather).
        """
        if self.rank != 0 and self.cfg.zero_stage != 3:
            return {}
        weights = {name: self._weights(engine) for name, engine in self._models()}
        return weights if self.rank == 0 else {}

    def partitioned_sizes(self) -> list[tuple[int, int]]:
        """(elements this rank holds, elements in all) of each policy parameter ZeRO-3 manages; [] otherwise."""
        return [(int(p.ds_tensor.numel()), int(p.ds_numel)) for p in self.policy.module.parameters()
                if hasattr(p, "ds_numel")]

    def _models(self):
        return [("policy", self.policy), *self.critics.items(),
                *([("rollout_policy", self.rollout)] if self.rollout is not None else [])]

    def _weights(self, engine) -> Weights:
        if self.cfg.zero_stage == 3:  # parameters are partitioned: gather them first
            with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
                return to_numpy(engine.module)
        return to_numpy(engine.module)

    # ---- checkpoints -----------------------------------------------------------------
    def save(self, out_dir: str | Path) -> None:
        """HF folders for every model (safetensors) plus DeepSpeed engine state (optimizer included).

        Every rank calls it (DeepSpeed's checkpoint is collective); rank 0 writes the HF folders.
        """
        out = Path(out_dir)
        for name, engine in self._models():
            self._save_hf(engine, out / name)
            engine.save_checkpoint(str(out / "deepspeed"), tag=name)
        if self.rank == 0:
            (out / "learner.json").write_text(json.dumps({"version": self.version, "critics": list(self.critics),
                                                          "verified": list(self.verified)}))

    def _save_hf(self, engine, path: Path, *, all_ranks: bool = False) -> None:
        """save_pretrained of engine's model by rank 0 (or by every rank into its own path)."""
        writes = all_ranks or self.rank == 0
        if self.cfg.zero_stage == 3:  # parameters are partitioned: gather them first (every rank takes part)
            with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
                if writes:
                    engine.module.save_pretrained(str(path))
        elif writes:
            engine.module.save_pretrained(str(path))
        if writes:
            self.tokenizer.save_pretrained(str(path))

    def init_value_from_policy(self) -> None:
        """Give every critic the current policy's backbone (and a fresh head and optimizer); a generative
        critic becomes a copy of the policy.

        Called after the bootstrap, so that the critics start from a model that already reads the task.
        """
        with tempfile.TemporaryDirectory() as tmp:  # every rank writes and reads its own copy
            path = Path(tmp)
            self._save_hf(self.policy, path, all_ranks=True)
            for name in self.critics:
                self.critics[name] = self._engine(self._critic_model(path, name), self._lr(name))

    def load(self, ckpt_dir: str | Path) -> int:
        """Restore engine states and the version from a folder written by save()."""
        ckpt = Path(ckpt_dir)
        for name, engine in self._models():
            path, _ = engine.load_checkpoint(str(ckpt / "deepspeed"), tag=name)
            if path is None:
                raise ValueError(f"{ckpt / 'deepspeed'}: no DeepSpeed state for {name}")
        state = json.loads((ckpt / "learner.json").read_text())
        self.version = state["version"]
        self.verified = dict.fromkeys(state.get("verified", []))
        return self.version
