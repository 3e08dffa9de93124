"""Weights as plain data: a dict of numpy arrays, cheap to put in Ray's object store.

Tied parameters (a language-model head that is the input embedding) are one tensor under two names in
a state_dict; `to_numpy` gives it once, under its first name, so every publish moves it once, and
`load_numpy` fills the other name through the tie (the receiving model must have the same tie).
"""
from __future__ import annotations

import numpy as np
import torch

Weights = dict[str, np.ndarray]


def tied_names(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """{name: the earlier name of the same tensor} for every entry that aliases an earlier one."""
    first: dict[tuple, str] = {}
    out: dict[str, str] = {}
    for k, v in state.items():
        if v.numel() == 0:  # empty tensors may share a data pointer without being tied
            continue
        key = (v.device, v.data_ptr(), v.dtype, tuple(v.shape), v.stride())
        if key in first:
            out[k] = first[key]
        else:
            first[key] = k
    return out


def to_numpy(model: torch.nn.Module) -> Weights:
    """Every tensor of the state_dict as float32 numpy (views, on CPU in float32), a tied one once."""
    state = model.state_dict()
    tied = tied_names(state)
    return {k: v.detach().float().cpu().numpy() for k, v in state.items() if k not in tied}


@torch.no_grad()
def load_numpy(model: torch.nn.Module, weights: Weights) -> None:
    """Copy weights into model in place; names and shapes must match exactly (a name tied to an earlier one
    in model may be left out: the earlier one's copy fills it)."""
    state = model.state_dict()
    tied = tied_names(state)
    missing = set(state) - set(weights) - set(tied)
    extra = set(weights) - set(state)
    if missing or extra:
        raise ValueError(f"weights do not match the model: missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]}")
    for k, v in state.items():
        if k not in weights:
            continue  # tied to an earlier name, copied through it
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
