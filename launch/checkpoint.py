"""Checkpoint folders of a run: run_dir/checkpoints/round_NNNN/{policy,value,deepspeed,loop_state.json,manifest.json}.

A checkpoint is written into a temporary folder and renamed into place only once
complete, so a crash never leaves a half-written checkpoint that resume would pick.
The last file written before the rename is manifest.json: the sha256 and size of every
other file. Resume and `arbor eval` verify it; a checkpoint that fails (a file missing,
cut short or changed) is named in a warning and the previous valid one is used instead.
"""
from __future__ import annotations

import errno
import hashlib
import json
import shutil
import warnings
from pathlib import Path

LOOP_STATE = "loop_state.json"
MANIFEST = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or used; the message names the folder and the file."""


class CheckpointWarning(UserWarning):
    """A checkpoint skipped on resume because it failed verification."""


def checkpoint_dir(run_dir: str | Path, round_: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"round_{round_:04d}"


def staging_dir(run_dir: str | Path, round_: int) -> Path:
    p = checkpoint_dir(run_dir, round_).with_suffix(".partial")
    if p.exists():
        shutil.rmtree(p)
    return p


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: Path) -> dict:
    """manifest.json: {relative path: {sha256, bytes}} of every file under folder but itself."""
    files = {str(p.relative_to(folder)): {"sha256": _sha256(p), "bytes": p.stat().st_size}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    _write_text(folder / MANIFEST, json.dumps({"files": files}, indent=1))
    return files


def _write_text(path: Path, text: str) -> None:
    # one seam for every byte this module writes, so a test can make it fail as a full disk would
    path.write_text(text)


def failed_write(staging: Path, err: BaseException, previous: Path | None) -> CheckpointError:
    """Remove a half-written checkpoint and say what happened (a full disk by name)."""
    shutil.rmtree(staging, ignore_errors=True)
    cause = err
    while cause is not None and not isinstance(cause, OSError):  # Ray wraps an actor's OSError
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
        what = f"the disk is full (ENOSPC: {cause})"
    else:
        what = f"{type(err).__name__}: {err}"
    kept = f"the previous checkpoint {previous} is intact" if previous else "there is no earlier checkpoint"
    return CheckpointError(f"writing checkpoint {staging.with_suffix('')} failed: {what}; the partial folder "
                           f"{staging} was removed and {kept}")


def commit(staging: Path, loop_state: dict) -> Path:
    """Write the loop state and then the manifest, then rename the folder into place.

    Raises:
        CheckpointError: a write failed (e.g. the disk is full); staging is removed, earlier checkpoints untouched.
    """
    final = staging.with_suffix("")
    try:
        _write_text(staging / LOOP_STATE, json.dumps(loop_state, indent=1))
        write_manifest(staging)
    except OSError as e:
        raise failed_write(staging, e, latest_checkpoint(final.parent.parent)) from e
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    return final


def verify(ckpt: Path) -> str | None:
    """None if every file the manifest lists is there with its size and sha256; else what failed, naming the file."""
    manifest = ckpt / MANIFEST
    if not manifest.is_file():
        return f"{manifest} is missing (the checkpoint is incomplete or predates checksums)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        return f"{manifest} is not a valid manifest ({e})"
    for rel, want in files.items():
        p = ckpt / rel
        if not p.is_file():
            return f"{p} is missing"
        size = p.stat().st_size
        if size != want["bytes"]:
            return f"{p} has {size} bytes, the manifest says {want['bytes']} (truncated or changed)"
        if _sha256(p) != want["sha256"]:
            return f"{p} does not match its sha256 in the manifest (corrupt)"
    return None


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's renamed-into-place checkpoint folders, oldest first."""
    root = Path(run_dir) / "checkpoints"
    return sorted(p for p in root.glob("round_[0-9][0-9][0-9][0-9]") if p.is_dir())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run (not verified), or None."""
    done = [p for p in checkpoints(run_dir) if (p / LOOP_STATE).is_file()]
    return done[-1] if done else None


def latest_valid_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint that verifies; each newer one that fails is named in a CheckpointWarning.

    Returns None when the run has no checkpoint. Raises CheckpointError when it has some and none verifies.
    """
    found = checkpoints(run_dir)
    failures = []
    for p in reversed(found):
        problem = verify(p)
        if problem is None:
            return p
        failures.append(problem)
        warnings.warn(f"skipping checkpoint {p}: {problem}; falling back to the previous one",
                      CheckpointWarning, stacklevel=2)
    if found:
        raise CheckpointError(f"no valid checkpoint in {Path(run_dir) / 'checkpoints'}: " + "; ".join(failures))
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder as given (verified), or the newest valid checkpoint of a run folder."""
    p = Path(path)
    if (p / LOOP_STATE).is_file() or (p / MANIFEST).is_file():
        problem = verify(p)
        if problem is not None:
            raise CheckpointError(f"checkpoint {p} failed verification: {problem}")
        return p
    latest = latest_valid_checkpoint(p)
    if latest is None:
        raise CheckpointError(f"{p}: neither a checkpoint folder (no {LOOP_STATE}) nor a run folder with checkpoints")
    return latest


def load_loop_state(ckpt: Path) -> dict:
    return json.loads((ckpt / LOOP_STATE).read_text())


# Run on every learner rank by LearnerGroup.call, for loop_state.json: learner.json (Learner.save) keeps the
# version and the verified set but not Learner.rng, and a learner rebuilt from the seed on resume drew other
# batches and value samples than the uninterrupted run (round 2's value_ece differed after a driver kill).
def learner_rng_state(learner) -> dict:
    """The learner's batch-order generator state (the same on every rank: same seed, same draws)."""
    return learner.rng.bit_generator.state


def set_learner_rng_state(learner, state: dict) -> None:
    learner.rng.bit_generator.state = state


# Config keys a resumed run may not change: the checkpoint's weights, optimizer state or critics were made for
# them. A key matches a prefix when it equals it or continues it with a dot. Every other key is a safe change
# (loop.rounds, wandb.*, loop.eval_size, search.* and so on): the resumed run uses the new value.
BREAKING_PREFIXES = (
    "model.policy", "model.value", "model.embedded",  # the architecture and base weights behind the checkpoint
    "model.rollout_policy", "model.rollout_embedded",
    "task",                                           # what the policy, critics and replay buffer learned
    "learner.critics", "learner.critic_model",        # which critic folders exist and what kind they are
    "learner.zero_stage", "learner.num_ranks",        # DeepSpeed's optimizer state is partitioned by these
)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def breaking_changes(saved: dict, current: dict) -> list[str]:
    """Dotted keys under BREAKING_PREFIXES whose value differs between the checkpoint's config and the current one."""
    a, b = _flatten(saved), _flatten(current)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and any(k == p or k.startswith(p + ".") for p in BREAKING_PREFIXES)]


def check_resume_config(ckpt: Path, current: dict) -> None:
    """Raise CheckpointError naming every key whose change breaks resuming from ckpt."""
    changed = breaking_changes(load_loop_state(ckpt)["config"], current)
    if changed:
        raise CheckpointError(f"cannot resume from {ckpt}: the config changes keys the checkpoint depends on "
                              f"({'; '.join(changed)}); restore them or start a new run_dir")
