"""Checkpoint folders of a run: run_dir/checkpoints/round_NNNN/{policy,value,deepspeed,loop_state.json}.

A checkpoint is written into a temporary folder and renamed into place only once
complete, so a crash never leaves a half-written checkpoint that resume would pick.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

LOOP_STATE = "loop_state.json"


def checkpoint_dir(run_dir: str | Path, round_: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"round_{round_:04d}"


def staging_dir(run_dir: str | Path, round_: int) -> Path:
    p = checkpoint_dir(run_dir, round_).with_suffix(".partial")
    if p.exists():
        shutil.rmtree(p)
    return p


def commit(staging: Path, loop_state: dict) -> Path:
    """Write the loop state last, then rename the folder into place."""
    (staging / LOOP_STATE).write_text(json.dumps(loop_state, indent=1))
    final = staging.with_suffix("")
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    root = Path(run_dir) / "checkpoints"
    done = sorted(p for p in root.glob("round_[0-9][0-9][0-9][0-9]") if (p / LOOP_STATE).is_file())
    return done[-1] if done else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder as given, or the newest checkpoint of a run folder."""
    p = Path(path)
    if (p / LOOP_STATE).is_file():
        return p
    latest = latest_checkpoint(p)
    if latest is None:
        raise ValueError(f"{p}: neither a checkpoint folder (no {LOOP_STATE}) nor a run folder with checkpoints")
    return latest


def load_loop_state(ckpt: Path) -> dict:
    return json.loads((ckpt / LOOP_STATE).read_text())
