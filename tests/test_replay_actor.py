"""Inbox backpressure without Ray, then the replay actor fed directly by sender actors."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rl.experience import NodeExperience
from rl.inbox import Inbox

NAN = float("nan")


def node(i: int, *, sender: str = "p", version: int = 0) -> NodeExperience:
    return NodeExperience(id=f"{sender}/v{version}/{i}", problem_id=sender, node=i, parent=0, depth=1,
                          state=f"Q: x\nstep {i}\n", step=f"step {i}\n", visits=1, value=0.5,
                          value_target=NAN, terminal_reward=NAN, policy_version=version, critic_version=version)


def ids(records) -> list[str]:
    return [r.id for r in records]


# --- Inbox: plain Python -------------------------------------------------------------------------


def test_inbox_drop_new_refuses_past_capacity():
    box = Inbox(5, "drop_new")
    assert box.offer([node(i) for i in range(3)]) == 3
    assert box.offer([node(i) for i in range(3, 8)]) == 2
    assert len(box) == 5 and ids(box.take()) == [f"p/v0/{i}" for i in range(5)]
    assert box.metrics() == {"replay/inbox_size": 0, "replay/accepted": 5, "replay/dropped": 3,
                             "replay/blocked_seconds": 0.0}


def test_inbox_drop_oldest_keeps_the_newest():
    box = Inbox(3, "drop_oldest")
    assert box.offer([node(i) for i in range(2)]) == 2
    assert box.offer([node(i) for i in range(2, 6)]) == 4
    assert ids(box.take(2)) == ["p/v0/3", "p/v0/4"]  # 0, 1, 2 were pushed out; oldest first
    assert ids(box.take(10)) == ["p/v0/5"] and box.take() == []
    m = box.metrics()
    assert (m["replay/accepted"], m["replay/dropped"], m["replay/inbox_size"]) == (6, 3, 0)


def test_inbox_block_takes_what_fits_and_never_drops():
    box = Inbox(5, "block")
    records = [node(i) for i in range(8)]
    n = box.offer(records)
    assert n == 5 and box.room == 0
    assert box.offer(records[n:]) == 0  # still full: the caller waits
    assert ids(box.take(2)) == ["p/v0/0", "p/v0/1"]
    assert box.offer(records[n:]) == 2
    box.record_wait(0.25)
    box.record_wait(0.5)
    assert box.metrics() == {"replay/inbox_size": 5, "replay/accepted": 7, "replay/dropped": 0,
                             "replay/blocked_seconds": 0.75}


@pytest.mark.parametrize("args, key", [((0, "block"), "replay.inbox_capacity"),
                                       ((2.5, "block"), "replay.inbox_capacity"),
                                       ((5, "drop"), "replay.backpressure")])
def test_inbox_errors_name_the_config_key(args, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        Inbox(*args)


def test_inbox_bad_calls():
    box = Inbox(2)
    with pytest.raises(ValueError):
        box.take(-1)
    with pytest.raises(ValueError):
        box.record_wait(-1.0)


def test_inbox_imports_without_ray():
    code = "import sys; sys.modules['ray'] = None; import rl.inbox; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# --- ReplayActor ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_local2():
    import ray
    if ray.is_initialized():  # a session started elsewhere; this module wants its own 2-CPU one
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def sender_cls(ray_local2):
    ray = ray_local2
    # Workers cannot import test modules (tests/ is not on their path): ship `node` and Sender by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    @ray.remote(num_cpus=0.1)
    class Sender:
        """A stand-in rollout actor: builds its records itself and puts them straight into the replay."""

        def __init__(self, replay, name: str):
            self.replay, self.name = replay, name

        def send(self, n: int, batch: int, version: int = 0) -> int:
            accepted = 0
            for start in range(0, n, batch):
                recs = [node(i, sender=self.name, version=version) for i in range(start, min(n, start + batch))]
                accepted += ray.get(self.replay.put.remote(recs))
            return accepted

    return Sender


def _replay(ray, capacity: int, inbox_capacity: int, backpressure: str):
    from actors.replay import ReplayActor
    replay = ReplayActor.remote(capacity, inbox_capacity=inbox_capacity, backpressure=backpressure)
    assert ray.get(replay.size.remote()) == 0  # started
    return replay


@pytest.mark.ray
def test_senders_put_directly_and_everything_arrives(ray_local2, sender_cls, tmp_path):
    ray = ray_local2
    replay = _replay(ray, 100, 100, "drop_new")
    senders = [sender_cls.remote(replay, name) for name in ("a", "b")]
    # the driver sends only counts; the records are made and put by the senders
    assert ray.get([senders[0].send.remote(10, 3, version=1), senders[1].send.remote(7, 2, version=3)]) == [10, 7]
    assert ray.get(replay.drain.remote()) == 17
    got = ids(ray.get(replay.records.remote(None, 3)))
    assert sorted(got) == sorted([f"a/v1/{i}" for i in range(10)] + [f"b/v3/{i}" for i in range(7)])
    for name in ("a", "b"):  # each sender's records keep their order
        mine = [g for g in got if g.startswith(name)]
        assert mine == sorted(mine, key=lambda s: int(s.rsplit("/", 1)[1]))
    assert sorted(ids(ray.get(replay.records.remote(1, 3)))) == sorted(f"b/v3/{i}" for i in range(7))
    assert ids(ray.get(replay.sample.remote(5, 7))) == ids(ray.get(replay.sample.remote(5, 7)))  # seeded
    assert len(ray.get(replay.sample.remote(20, 7, prioritized=True))) == 20
    m = ray.get(replay.metrics.remote())
    assert (m["replay/accepted"], m["replay/dropped"], m["replay/size"], m["replay/inbox_size"]) == (17, 0, 17, 0)
    path = str(tmp_path / "replay.jsonl")
    assert ray.get(replay.save.remote(path)) == 17
    fresh = _replay(ray, 100, 100, "block")
    assert ray.get(fresh.load.remote(path)) == 17
    assert sorted(ids(ray.get(fresh.records.remote(None, 0)))) == sorted(got)
    for a in [replay, fresh, *senders]:
        ray.kill(a)


@pytest.mark.ray
def test_drop_new_keeps_capacity_and_counts_the_rest(ray_local2, sender_cls):
    ray = ray_local2
    replay = _replay(ray, 100, 5, "drop_new")
    sender = sender_cls.remote(replay, "a")
    assert ray.get(sender.send.remote(8, 8)) == 5
    assert ray.get(replay.drain.remote()) == 5
    assert ids(ray.get(replay.records.remote(None, 0))) == [f"a/v0/{i}" for i in range(5)]
    m = ray.get(replay.metrics.remote())
    assert (m["replay/accepted"], m["replay/dropped"], m["replay/size"]) == (5, 3, 5)
    for a in (replay, sender):
        ray.kill(a)


@pytest.mark.ray
def test_block_waits_for_drain(ray_local2, sender_cls):
    ray = ray_local2
    replay = _replay(ray, 100, 5, "block")
    sender = sender_cls.remote(replay, "a")
    ref = sender.send.remote(8, 8)
    deadline = time.monotonic() + 30
    while ray.get(replay.metrics.remote())["replay/inbox_size"] < 5:  # the actor answers while put waits
        assert time.monotonic() < deadline, "the put never arrived"
        time.sleep(0.05)
    done, _ = ray.wait([ref], timeout=1.0)
    assert not done  # 5 fit, 3 wait for room
    assert ray.get(replay.size.remote()) == 0
    assert ray.get(replay.drain.remote()) == 5
    assert ray.get(ref, timeout=30) == 8
    assert ray.get(replay.drain.remote()) == 3
    assert ids(ray.get(replay.records.remote(None, 0))) == [f"a/v0/{i}" for i in range(8)]
    m = ray.get(replay.metrics.remote())
    assert (m["replay/accepted"], m["replay/dropped"], m["replay/size"]) == (8, 0, 8)
    assert m["replay/blocked_seconds"] >= 1.0  # it waited at least as long as ray.wait above
    for a in (replay, sender):
        ray.kill(a)



@pytest.mark.ray
def test_drain_new_returns_exactly_the_new_records(ray_local2, sender_cls):
    ray = ray_local2
    replay = _replay(ray, 100, 100, "block")
    sender = sender_cls.remote(replay, "s")
    ray.get(sender.send.remote(4, 2, version=1))
    first = ray.get(replay.drain_new.remote())
    ray.get(sender.send.remote(3, 3, version=2))
    second = ray.get(replay.drain_new.remote())
    assert ids(first) == [f"s/v1/{i}" for i in range(4)]
    assert ids(second) == [f"s/v2/{i}" for i in range(3)]
    assert ray.get(replay.size.remote()) == 7  # both drains landed in the buffer too
