"""The driver SIGKILLed at a phase of round 2, then `arbor train --resume auto`: summary.json, every checkpoint
file and the replay buffer equal those of the same run left uninterrupted; W&B continues the same run; and every
port the run's processes open is bound to loopback.

The kill comes from the driver itself at a named point (launch.controller.kill_point, ARBOR_KILL_AT=PHASE:ROUND),
so it lands at the same place on every run whatever the machine's load."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from launch import checkpoint as ckpt

from . import conftest as fault

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # ~33 s per `arbor train` process here (imports, Ray, DeepSpeed): 165 s

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 2  # a kill in round 2 resumes from round 1's checkpoint: replay records, verified set, optimizer steps
# the smallest run that goes through the whole loop: bootstrap, then search, critics, policy, push, eval
TINY = ["model.embedded.hidden_size=32", "model.embedded.num_layers=2", "model.embedded.num_heads=2",
        "model.embedded.intermediate_size=64", "bootstrap.steps=5", "bootstrap.examples=64",
        "loop.prompts_per_round=4", "loop.eval_size=4", "loop.eval_search_size=2", "loop.eval_methods=[]",
        "search.simulations=3", "search.branching=2", "search.step_max_tokens=8",
        "rollout.num_actors=1", "rollout.num_cpus=0.5", "rollout.chunk_size=2",  # 2 chunks: a kill between them
        "learner.num_cpus=1.0", "learner.batch_size=4", "learner.verifier_steps=4", "learner.policy_epochs=1",
        "learner.value_epochs=1", "wandb.mode=offline", f"loop.rounds={ROUNDS}"]
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _train(run_dir: Path, kill_at: str | None = None, *, sockets: bool = False) -> tuple[int, set]:
    """`arbor train` as a subprocess; returns its exit code and, with sockets, {(pid, name, ip, port, kind)} of
    every socket its process tree listened on (TCP) or bound (UDP), sampled every 0.3 s. Processes of the tree
    still alive 10 s after the driver exits (Ray's agents outlive a SIGKILLed driver) are killed by pid."""
    env = {k: v for k, v in os.environ.items() if k != "ARBOR_KILL_AT"}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", WANDB_MODE="offline", OMP_NUM_THREADS="1")
    if kill_at:
        env["ARBOR_KILL_AT"] = kill_at
    log = open(run_dir.parent / f"{run_dir.name}-{kill_at or 'full'}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "launch.cli", "train", "configs/arithmetic.yaml",
                             f"run_dir={run_dir}", *TINY], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    tree, seen = {}, set()
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            found = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            found = []
        for p in found:
            try:
                tree.setdefault(p.pid, p)
                for c in p.net_connections(kind="inet") if sockets else ():
                    if c.status == psutil.CONN_LISTEN or (c.type == 2 and not c.raddr):  # 2: SOCK_DGRAM
                        seen.add((p.pid, p.name(), c.laddr.ip, c.laddr.port, c.type))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        time.sleep(0.3)
    if proc.poll() is None:
        proc.kill()
    rc = proc.wait()
    log.close()
    _, alive = psutil.wait_procs([p for pid, p in tree.items() if pid != proc.pid], timeout=10)
    for p in alive:
        p.kill()
    return rc, seen


def _rows(run_dir: Path) -> str:
    """summary.json without the wall times, as JSON text (NaN compares equal to NaN)."""
    rows = json.loads((run_dir / "summary.json").read_text())
    return json.dumps([{k: v for k, v in r.items() if k != "seconds"} for r in rows], sort_keys=True)


def _files(run_dir: Path, round_: int) -> dict:
    """sha256 of every file of a checkpoint but loop_state.json (it holds run_dir and the wall times)."""
    files = json.loads((ckpt.checkpoint_dir(run_dir, round_) / ckpt.MANIFEST).read_text())["files"]
    return {k: v["sha256"] for k, v in files.items() if k != ckpt.LOOP_STATE}


def _replay_ids(run_dir: Path) -> list[str]:
    from rl.experience import ReplayBuffer
    return [r.id for r in ReplayBuffer.load(ckpt.checkpoint_dir(run_dir, ROUNDS) / "replay.jsonl")]


def _wandb_history(run_dir: Path) -> list[tuple[str, list[int]]]:
    """(run id, logged steps) of each offline W&B run folder of run_dir, oldest first."""
    exe = shutil.which("wandb") or str(Path(sys.executable).with_name("wandb"))
    out = []
    for folder in sorted((run_dir / "wandb").glob("offline-run-*")):
        res = subprocess.run([exe, "leet", "inspect", "--json", str(folder)], capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stderr
        records = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
        out.append((folder.name.rsplit("-", 1)[1],
                    [r["history"]["item"]["_step"] for r in records if r.get("type") == "history"]))
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    rc, sockets = _train(run, sockets=True)
    assert rc == 0, (run.parent / "run-full.log").read_text()[-3000:]
    return run, sockets


# search: killed between the round's two chunks (records in the replay actor, not drained); checkpoint: the
# learner's and replay's files written into round_0002.partial, not committed
@pytest.fixture(scope="module", params=["search", "checkpoint"])
def resumed(request, tmp_path_factory):
    phase = request.param
    run = tmp_path_factory.mktemp(f"killed-{phase}") / "run"
    fault.injected()
    rc, _ = _train(run, kill_at=f"{phase}:{ROUNDS}")
    assert rc == -9, f"expected the driver to SIGKILL itself at {phase}, exit code {rc}"
    assert ckpt.latest_checkpoint(run) == ckpt.checkpoint_dir(run, ROUNDS - 1)
    assert (ckpt.checkpoint_dir(run, ROUNDS).with_suffix(".partial").is_dir()) == (phase == "checkpoint")
    rc, _ = _train(run)  # --resume auto is the default
    assert rc == 0, (run.parent / "run-full.log").read_text()[-3000:]
    return phase, run


def test_resumed_run_equals_the_uninterrupted_one(reference, resumed):
    ref, _ = reference
    phase, run = resumed
    want, got = _replay_ids(ref), _replay_ids(run)
    lost, duplicated = len(set(want) - set(got)), len(got) - len(set(got))
    fault.records(lost, duplicated)
    assert lost == 0 and duplicated == 0 and sorted(got) == sorted(want) and want
    assert _rows(run) == _rows(ref)
    for r in range(ROUNDS + 1):  # weights, DeepSpeed optimizer state, learner.json, replay: byte for byte
        assert _files(run, r) == _files(ref, r), f"round {r} differs after a kill at {phase}"
    assert not ckpt.checkpoint_dir(run, ROUNDS).with_suffix(".partial").exists()
    fault.survived()


def test_wandb_continues_the_same_run_and_its_steps(resumed):
    phase, run = resumed
    segments = _wandb_history(run)
    assert len(segments) == 2, segments                       # the killed run's folder and the resumed one's
    assert {rid for rid, _ in segments} == {(run / "wandb_id").read_text().strip()}
    steps = [s for _, seg in segments for s in seg]
    assert steps == list(range(ROUNDS + 1)), f"W&B steps after a kill at {phase}: {segments}"


def test_every_port_of_a_local_run_is_bound_to_loopback(reference):
    _, sockets = reference
    listeners = {pid for pid, _, _, _, kind in sockets if kind == 1}  # 1: SOCK_STREAM
    # Ray's GCS, raylet and agents, the replay actor, the learner rank's TCP store: enough to mean something
    assert len(listeners) >= 4, sockets
    assert {s for s in sockets if s[2] not in LOOPBACK} == set()
