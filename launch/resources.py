"""Per-round throughput and memory figures for the dashboard (perf/*), from the round's metrics and psutil.

Host memory is the resident set of the driver and every process under it: on a local cluster that is Ray's
raylet, the rollout, replay and learner actors. On a multi-node cluster it covers this node only. GPU memory
is the used memory of each visible device (torch.cuda.mem_get_info: every process on it, not only ours).
"""
from __future__ import annotations

import psutil
import torch


def host_rss_mb(pid: int | None = None) -> float:
    """Resident memory (MiB) of process `pid` (default: this one) and all its descendants."""
    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # a worker that exited while we walked the tree
            continue
    return total / 2**20


def gpu_used_mb() -> dict[str, float]:
    """perf/gpu{i}_used_mb per visible CUDA device; empty without CUDA."""
    if not torch.cuda.is_available():
        return {}
    out = {}
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        out[f"perf/gpu{i}_used_mb"] = (total - free) / 2**20
    return out


def round_perf(metrics: dict, batch_size: int) -> dict:
    """Throughput from a round's metrics (only the figures whose inputs the round has) and memory now."""
    out: dict = {"perf/host_rss_mb": host_rss_mb(), **gpu_used_mb()}
    if metrics.get("time/search", 0) > 0 and "tokens/generated" in metrics:
        out["perf/tokens_per_s"] = metrics["tokens/generated"] / metrics["time/search"]
    if "search/simulations" in metrics and "perf/problems_per_s" in metrics:  # mean per problem x problems/s
        out["perf/simulations_per_s"] = metrics["search/simulations"] * metrics["perf/problems_per_s"]
    if metrics.get("time/policy_train", 0) > 0 and "learner/policy_steps" in metrics:
        out["perf/learner_samples_per_s"] = metrics["learner/policy_steps"] * batch_size / metrics["time/policy_train"]
    return out
