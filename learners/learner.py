"""The learner: DeepSpeed engines for the policy (SFT) and the value critic (BCE on MC targets).

A plain class (Ray wraps it in learners/actor.py). Losses and batches come from rl/losses.py.
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

from learners.dist import bind_free_port, init_group
from rl.config import LearnerConfig
from rl.losses import sft_batch, sft_loss, value_batch, value_loss
from rl.models.critic import last_token_logits, load_value_model
from rl.models.device import pick_device
from rl.models.weights import Weights, to_numpy

MAX_LEN = 256  # tokens per training sequence; arithmetic solutions are well under 100


def ds_config(cfg: LearnerConfig, on_gpu: bool) -> dict:
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": on_gpu and torch.cuda.is_bf16_supported()},  # fp32 on CPU
        "steps_per_print": 10**9,
    }


class Learner:
    def __init__(self, cfg: LearnerConfig, policy_path: str, value_path: str, *, seed: int = 0,
                 num_threads: int | None = None):
        if num_threads:
            torch.set_num_threads(num_threads)
        if cfg.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"learner.zero_stage = {cfg.zero_stage}: use 0, 1, 2 or 3")
        self.cfg = cfg
        self.device = pick_device()
        self._sock = bind_free_port()
        init_group(0, 1, "127.0.0.1", self._sock.getsockname()[1], self._sock)
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.tokenizer = AutoTokenizer.from_pretrained(policy_path)
        self.tokenizer.padding_side = "right"
        self.policy = self._engine(AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32), cfg.policy_lr)
        self.value = self._engine(load_value_model(value_path), cfg.value_lr)
        self.version = 0

    def _engine(self, model, lr: float):
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)  # torch AdamW: no fused-Adam build
        engine, *_ = deepspeed.initialize(model=model, optimizer=opt,
                                          config=ds_config(self.cfg, self.device.type == "cuda"))
        return engine

    # ---- training --------------------------------------------------------------------
    def _fit(self, engine, n: int, make_batch, loss_fn, *, epochs: int, steps: int | None, lr: float | None) -> list[float]:
        """Minibatch training over n items for epochs (or exactly `steps` steps); returns per-step losses."""
        saved_lr = [g["lr"] for g in engine.optimizer.param_groups]
        if lr is not None:  # a one-off rate (the bootstrap's), restored below
            for g in engine.optimizer.param_groups:
                g["lr"] = lr
        bs = self.cfg.batch_size
        total = steps if steps is not None else epochs * max(1, -(-n // bs))
        order, losses = np.array([], dtype=int), []
        engine.train()
        for _ in range(total):
            if len(order) < min(bs, n):
                order = np.concatenate([order, self.rng.permutation(n)])
            idx, order = order[:bs], order[bs:]
            batch = {k: v.to(engine.device) for k, v in make_batch(idx).items()}
            loss = loss_fn(engine, batch)
            engine.backward(loss)
            engine.step()
            losses.append(float(loss.detach()))
        for g, old in zip(engine.optimizer.param_groups, saved_lr):
            g["lr"] = old
        return losses

    def train_policy(self, prompts: list[str], completions: list[str], *, epochs: int | None = None,
                     steps: int | None = None, lr: float | None = None) -> dict:
        """SFT on (prompt, completion) pairs; the loss covers the completion and its EOS."""
        t0 = time.perf_counter()
        if not prompts:
            return {"learner/policy_steps": 0}
        losses = self._fit(
            self.policy, len(prompts),
            lambda idx: sft_batch(self.tokenizer, [prompts[i] for i in idx], [completions[i] for i in idx], MAX_LEN),
            lambda eng, b: sft_loss(eng(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"]),
            epochs=self.cfg.policy_epochs if epochs is None else epochs, steps=steps, lr=lr)
        return {"learner/policy_loss": float(np.mean(losses[-max(1, len(losses) // 4):])),
                "learner/policy_loss_first": losses[0], "learner/policy_steps": len(losses),
                "learner/policy_examples": len(prompts), "time/policy_train": time.perf_counter() - t0}

    def train_value(self, states: list[str], targets: np.ndarray, *, epochs: int | None = None) -> dict:
        """BCE of V(s) against Monte Carlo targets in [0, 1]."""
        t0 = time.perf_counter()
        if not states:
            return {"learner/value_steps": 0}
        y = torch.as_tensor(np.asarray(targets, dtype=np.float32))

        def make_batch(idx):
            b = value_batch(self.tokenizer, [states[i] for i in idx], MAX_LEN)
            b["targets"] = y[idx]
            return b

        losses = self._fit(
            self.value, len(states), make_batch,
            lambda eng, b: value_loss(last_token_logits(eng, b["input_ids"], b["attention_mask"]), b["targets"]),
            epochs=self.cfg.value_epochs if epochs is None else epochs, steps=None, lr=None)
        return {"learner/value_loss": float(np.mean(losses[-max(1, len(losses) // 4):])),
                "learner/value_loss_first": losses[0], "learner/value_steps": len(losses),
                "learner/value_examples": len(states), "time/value_train": time.perf_counter() - t0}

    @torch.no_grad()
    def value_scores(self, states: list[str]) -> np.ndarray:
        """V(s) under the learner's current weights (for held-out calibration checks)."""
        self.value.eval()
        b = value_batch(self.tokenizer, states, MAX_LEN)
        return torch.sigmoid(last_token_logits(self.value, b["input_ids"].to(self.value.device),
                                               b["attention_mask"].to(self.value.device))).cpu().numpy()

    # ---- weights ---------------------------------------------------------------------
    def publish(self) -> tuple[int, dict[str, Weights]]:
        """Bump the version and return it with the current weights of both models."""
        self.version += 1
        return self.version, self.weights()

    def weights(self) -> dict[str, Weights]:
        """Current weights of both models, without a new version (used when resuming)."""
        return {"policy": self._weights(self.policy), "value": self._weights(self.value)}

    def _weights(self, engine) -> Weights:
        if self.cfg.zero_stage == 3:  # parameters are partitioned: gather them first
            with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
                return to_numpy(engine.module)
        return to_numpy(engine.module)

    # ---- checkpoints -----------------------------------------------------------------
    def save(self, out_dir: str | Path) -> None:
        """HF folders for both models (safetensors) plus DeepSpeed engine state (optimizer included)."""
        out = Path(out_dir)
        for name, engine in (("policy", self.policy), ("value", self.value)):
            self._save_hf(engine, out / name)
            engine.save_checkpoint(str(out / "deepspeed"), tag=name)
        (out / "learner.json").write_text(json.dumps({"version": self.version}))

    def _save_hf(self, engine, path: Path) -> None:
        if self.cfg.zero_stage == 3:  # parameters are partitioned: gather them first
            with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
                engine.module.save_pretrained(str(path))
        else:
            engine.module.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))

    def init_value_from_policy(self) -> None:
        """Give the value critic the current policy's backbone (and a fresh head and optimizer).

        Called after the bootstrap, so that the critic starts from a model that already reads the task.
        """
        with tempfile.TemporaryDirectory() as tmp:
            self._save_hf(self.policy, Path(tmp))
            self.value = self._engine(load_value_model(tmp), self.cfg.value_lr)

    def load(self, ckpt_dir: str | Path) -> int:
        """Restore engine states and the version from a folder written by save()."""
        ckpt = Path(ckpt_dir)
        for name, engine in (("policy", self.policy), ("value", self.value)):
            path, _ = engine.load_checkpoint(str(ckpt / "deepspeed"), tag=name)
            if path is None:
                raise ValueError(f"{ckpt / 'deepspeed'}: no DeepSpeed state for {name}")
        self.version = json.loads((ckpt / "learner.json").read_text())["version"]
        return self.version
