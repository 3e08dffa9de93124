"""Where a measurement came from: the code (commit), the packages (versions) and the machine.

Every bench script calls provenance() once, before it measures (so a tree edited during a long run does not
change the recorded commit), and writes its fields at the top level of its JSON:

    {"commit": "<git rev-parse HEAD>[-dirty]",
     "versions": {"python": ..., "torch": ..., "transformers": ..., "deepspeed": ..., "ray": ..., "numpy": ...},
     "machine": "<platform.machine()>, <os.cpu_count()> CPU cores, <GPU name or 'no GPU'>"}

"-dirty": the working tree differs from HEAD (modified, staged, deleted or untracked files that .gitignore
does not cover), so the commit alone does not reproduce the code that ran. Package versions come from the
installed distributions' metadata (None where one is not installed); torch is imported only to name the GPU.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "transformers", "deepspeed", "ray", "numpy")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def commit() -> str:
    """HEAD of the repository this file lies in, plus "-dirty" if the working tree has changes; "unknown"
    outside a git checkout (or without git)."""
    try:
        head = _git("rev-parse", "HEAD")
        dirty = bool(_git("status", "--porcelain"))
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def gpu_name() -> str:
    """The CUDA device's name (with a count when there are several), or 'no GPU'."""
    try:
        import torch
    except ImportError:
        return "no GPU"
    if not torch.cuda.is_available():
        return "no GPU"
    n = torch.cuda.device_count()
    name = torch.cuda.get_device_name(0)
    return name if n == 1 else f"{n} x {name}"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu_name()}"


def provenance() -> dict:
    return {"commit": commit(), "versions": versions(), "machine": machine()}


if __name__ == "__main__":
    import json
    print(json.dumps(provenance(), indent=2))
