"""The learner as a Ray actor."""
from __future__ import annotations

import ray

from actors.runtime import runtime_env, threads_for
from learners.learner import Learner
from rl.config import Config

LearnerActor = ray.remote(Learner)


def start_learner(cfg: Config, policy_path: str, value_path: str):
    lc = cfg.learner
    env = runtime_env(lc.num_cpus)
    env["env_vars"]["DS_ACCELERATOR"] = "cuda" if lc.num_gpus > 0 else "cpu"
    return LearnerActor.options(num_cpus=lc.num_cpus, num_gpus=lc.num_gpus, runtime_env=env).remote(
        lc, policy_path, value_path, seed=cfg.seed, num_threads=threads_for(lc.num_cpus))
