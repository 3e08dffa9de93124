"""Weights as plain data: a dict of numpy arrays, cheap to put in Ray's object store."""
from __future__ import annotations

import numpy as np
import torch

Weights = dict[str, np.ndarray]


def to_numpy(model: torch.nn.Module) -> Weights:
    return {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}


@torch.no_grad()
def load_numpy(model: torch.nn.Module, weights: Weights) -> None:
    """Copy weights into model in place; names and shapes must match exactly."""
    state = model.state_dict()
    missing = set(state) - set(weights)
    extra = set(weights) - set(state)
    if missing or extra:
        raise ValueError(f"weights do not match the model: missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]}")
    for k, v in state.items():
        src = torch.from_numpy(np.asarray(weights[k]))
        if src.shape != v.shape:
            raise ValueError(f"weight {k}: shape {tuple(src.shape)} != {tuple(v.shape)}")
        v.copy_(src.to(device=v.device, dtype=v.dtype))


def join_models(by_model: dict[str, Weights]) -> Weights:
    """{"policy": w, "value": w2} -> one flat Weights keyed "policy/<name>" (what a broadcast group carries)."""
    return {f"{model}/{k}": v for model, w in by_model.items() for k, v in w.items()}


def split_models(flat: Weights) -> dict[str, Weights]:
    """Inverse of join_models."""
    out: dict[str, Weights] = {}
    for key, v in flat.items():
        model, name = key.split("/", 1)
        out.setdefault(model, {})[name] = v
    return out
