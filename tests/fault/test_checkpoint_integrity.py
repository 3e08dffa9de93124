"""Checkpoint manifests: a corrupt, truncated or missing file is named and resume falls back to the previous
valid checkpoint; a full disk while writing leaves the previous checkpoint intact and no partial folder."""
import errno
import json
from pathlib import Path

import pytest

from launch import checkpoint as ckpt
from rl.config import from_dict, to_dict

from . import conftest as fault


def _write(run_dir: Path, round_: int, config: dict | None = None) -> Path:
    """A checkpoint with the files a real one has (weights, optimizer shard, replay) and loop state."""
    staging = ckpt.staging_dir(run_dir, round_)
    (staging / "policy").mkdir(parents=True)
    (staging / "policy" / "model.safetensors").write_bytes(bytes(range(256)) * 8 + bytes([round_]))
    (staging / "deepspeed" / "policy").mkdir(parents=True)
    (staging / "deepspeed" / "policy" / "optim_states.pt").write_bytes(b"\x80opt" * 100)
    (staging / "replay.jsonl").write_text('{"id": "p0/0"}\n')
    return ckpt.commit(staging, {"round": round_, "config": config or {}})


def test_manifest_lists_every_file_and_a_good_checkpoint_verifies(tmp_path):
    c = _write(tmp_path, 1)
    files = json.loads((c / ckpt.MANIFEST).read_text())["files"]
    assert set(files) == {"policy/model.safetensors", "deepspeed/policy/optim_states.pt", "replay.jsonl",
                          ckpt.LOOP_STATE}
    assert files["replay.jsonl"]["bytes"] == len('{"id": "p0/0"}\n')
    assert ckpt.verify(c) is None and ckpt.latest_valid_checkpoint(tmp_path) == c


@pytest.mark.parametrize("damage, expect", [
    ("flip", "policy/model.safetensors does not match its sha256"),
    ("truncate", "loop_state.json has"),
    ("delete", "deepspeed/policy/optim_states.pt is missing"),
    ("no_manifest", "manifest.json is missing"),
])
def test_a_damaged_newest_checkpoint_is_named_and_resume_falls_back(tmp_path, damage, expect):
    fault.injected()
    good, bad = _write(tmp_path, 1), _write(tmp_path, 2)
    if damage == "flip":  # one byte flipped in the weights, size unchanged
        w = bad / "policy" / "model.safetensors"
        data = bytearray(w.read_bytes())
        data[100] ^= 0x01
        w.write_bytes(bytes(data))
    elif damage == "truncate":  # the loop state cut short
        s = bad / ckpt.LOOP_STATE
        s.write_text(s.read_text()[:5])
    elif damage == "delete":
        (bad / "deepspeed" / "policy" / "optim_states.pt").unlink()
    else:
        (bad / ckpt.MANIFEST).unlink()
    with pytest.warns(ckpt.CheckpointWarning, match=expect):
        assert ckpt.latest_valid_checkpoint(tmp_path) == good
    with pytest.raises(ckpt.CheckpointError, match=expect):  # named explicitly (arbor eval --checkpoint DIR)
        ckpt.resolve_checkpoint(bad)
    fault.survived()


def test_no_valid_checkpoint_is_one_clear_error(tmp_path):
    c = _write(tmp_path, 1)
    (c / "replay.jsonl").write_text("changed\n")
    with pytest.warns(ckpt.CheckpointWarning), pytest.raises(ckpt.CheckpointError, match="no valid checkpoint"):
        ckpt.latest_valid_checkpoint(tmp_path)
    assert ckpt.latest_valid_checkpoint(tmp_path / "empty_run") is None  # no checkpoints at all: a fresh start


def test_disk_full_while_writing_keeps_the_previous_checkpoint_and_removes_the_partial(tmp_path, monkeypatch):
    fault.injected()
    prev = _write(tmp_path, 1)
    before = {p: p.read_bytes() for p in prev.rglob("*") if p.is_file()}
    real = ckpt._write_text

    def full_disk(path, text):
        if path.name == ckpt.MANIFEST:  # everything else fitted; the last file does not
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, text)

    monkeypatch.setattr(ckpt, "_write_text", full_disk)
    with pytest.raises(ckpt.CheckpointError) as e:
        _write(tmp_path, 2)
    msg = str(e.value)
    assert "disk is full" in msg and "round_0002.partial was removed" in msg and str(prev) in msg
    assert not (tmp_path / "checkpoints" / "round_0002.partial").exists()
    assert not (tmp_path / "checkpoints" / "round_0002").exists()
    assert {p: p.read_bytes() for p in prev.rglob("*") if p.is_file()} == before
    monkeypatch.undo()
    assert ckpt.latest_valid_checkpoint(tmp_path) == prev
    fault.survived()


def test_a_failed_save_in_an_actor_is_reported_as_a_full_disk(tmp_path):
    """The controller's wrapper: Ray re-raises an actor's OSError as the cause of its own error."""
    staging = ckpt.staging_dir(tmp_path, 3)
    staging.mkdir(parents=True)
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("RayTaskError(OSError)") from inner
    except RuntimeError as outer:
        err = ckpt.failed_write(staging, outer, None)
    assert "disk is full" in str(err) and "no earlier checkpoint" in str(err) and not staging.exists()


def _cfg(*overrides):
    return to_dict(from_dict({"run_dir": "r"}, list(overrides), where="test"))


@pytest.mark.parametrize("override, key", [
    ("model.embedded.hidden_size=64", "model.embedded.hidden_size"),
    ("task.name=gsm8k", "task.name"),
    ("task.arithmetic.max_value=50", "task.arithmetic.max_value"),
    ("learner.critics=[q,prm]", "learner.critics"),
    ("learner.critic_model=head", "learner.critic_model"),
])
def test_resume_refuses_a_config_change_that_breaks_the_checkpoint(tmp_path, override, key):
    c = _write(tmp_path, 1, _cfg())
    with pytest.raises(ckpt.CheckpointError, match=key.replace(".", r"\.")):
        ckpt.check_resume_config(c, _cfg(override))


def test_resume_allows_safe_changes(tmp_path):
    c = _write(tmp_path, 1, _cfg())
    ckpt.check_resume_config(c, _cfg("loop.rounds=9", "wandb.mode=disabled", "loop.eval_size=10",
                                     "loop.eval_search_size=5", "search.simulations=4", "model.device=cpu"))
