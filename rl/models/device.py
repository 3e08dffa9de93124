"""Device choice: CUDA when present, else CPU; never hard-coded elsewhere."""
from __future__ import annotations

import torch


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"model.device = {requested!r} but no CUDA device is visible")
    return torch.device(requested)
