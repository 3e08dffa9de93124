"""ReplayBuffer on hand-built records: FIFO eviction, replacement, sampling, checkpoints, staleness."""
import dataclasses
import json
import math
import os

import numpy as np
import pytest

from rl.experience import NodeExperience, ReplayBuffer, Trajectory

NAN = float("nan")


def node(i: int, *, version: int = 0, value: float = 0.5, value_target: float = NAN,
         terminal_reward: float = NAN) -> NodeExperience:
    return NodeExperience(id=f"p/v{version}/{i}", problem_id="p", node=i, parent=0, depth=1,
                          state=f"Q: x\nstep {i}\n", step=f"step {i}\n", visits=i, value=value,
                          value_target=value_target, terminal_reward=terminal_reward,
                          policy_version=version, critic_version=version)


def traj(name: str, *, version: int = 0) -> Trajectory:
    return Trajectory(id=f"{name}/v{version}/traj", problem_id=name, prompt="Q: x\n", solution="Answer: 1\n",
                      reward=1.0, policy_version=version, critic_version=version)


def same(a, b) -> bool:
    """Record equality where NaN equals NaN (dataclass == says nan != nan)."""
    if type(a) is not type(b):
        return False
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if not (x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))):
            return False
    return True


def ids(records) -> list[str]:
    return [r.id for r in records]


def test_capacity_evicts_oldest_first_and_counts():
    buf = ReplayBuffer(3)
    buf.add([node(1), node(2)])
    buf.add([node(3), node(4), node(5)])
    assert ids(buf) == ["p/v0/3", "p/v0/4", "p/v0/5"]
    assert "p/v0/1" not in buf and "p/v0/5" in buf
    assert (len(buf), buf.added, buf.evicted, buf.replaced) == (3, 5, 2, 0)
    assert buf.metrics() == {"replay/size": 3, "replay/capacity": 3, "replay/added": 5,
                             "replay/replaced": 0, "replay/evicted": 2}
    buf.add([node(i) for i in range(6, 11)])  # one batch larger than the capacity
    assert ids(buf) == ["p/v0/8", "p/v0/9", "p/v0/10"]
    assert (buf.added, buf.evicted) == (10, 7)
    np.testing.assert_array_equal(buf.priorities(), [1.0, 1.0, 1.0])


def test_readd_replaces_in_place_keeping_age_and_priority():
    buf = ReplayBuffer(3)
    buf.add([node(1), node(2), node(3)], priorities=[1.0, 2.0, 3.0])
    buf.add([node(2, value=0.9)])  # corrected copy of the same experience
    assert ids(buf) == ["p/v0/1", "p/v0/2", "p/v0/3"]
    assert list(buf)[1].value == 0.9
    np.testing.assert_array_equal(buf.priorities(), [1.0, 2.0, 3.0])  # priority kept when none given
    buf.add([node(2, value=0.1)], priorities=[5.0])
    np.testing.assert_array_equal(buf.priorities(), [1.0, 5.0, 3.0])
    assert (len(buf), buf.added, buf.replaced, buf.evicted) == (3, 5, 2, 0)
    buf.add([node(4)])  # the oldest is still node 1, not the re-added node 2
    assert ids(buf) == ["p/v0/2", "p/v0/3", "p/v0/4"]
    assert len(buf) == buf.added - buf.replaced - buf.evicted


def test_add_rejects_bad_input():
    buf = ReplayBuffer(3)
    with pytest.raises(ValueError, match="2 records but 1 priorities"):
        buf.add([node(1), node(2)], priorities=[1.0])
    with pytest.raises(ValueError, match="priority"):
        buf.add([node(1)], priorities=[-1.0])
    with pytest.raises(ValueError, match="priority"):
        buf.add([node(1)], priorities=[NAN])
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0)
    assert len(buf) == 0 and buf.added == 0


def test_uniform_sampling_is_without_replacement_and_seeded():
    buf = ReplayBuffer(10)
    buf.add([node(i) for i in range(10)])
    s = buf.sample(6, np.random.default_rng(7))
    assert len(set(ids(s))) == 6
    assert ids(s) == ids(buf.sample(6, np.random.default_rng(7)))
    assert sorted(ids(buf.sample(10, np.random.default_rng(1)))) == sorted(ids(buf))  # a permutation
    draws = {tuple(ids(buf.sample(3, np.random.default_rng(seed)))) for seed in range(5)}
    assert len(draws) > 1  # the seed matters
    assert buf.sample(0, np.random.default_rng(0)) == []
    with pytest.raises(ValueError, match="without replacement"):
        buf.sample(11, np.random.default_rng(0))
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(2).sample(1, np.random.default_rng(0))


def frequencies(buf: ReplayBuffer, *, alpha: float, n: int = 2000, seed: int = 0) -> dict[str, int]:
    s = buf.sample(n, np.random.default_rng(seed), prioritized=True, alpha=alpha)
    return {k: ids(s).count(k) for k in ids(buf)}


def test_prioritized_frequencies_follow_priority_power_alpha():
    buf = ReplayBuffer(4)
    a, b = node(1), node(2)
    buf.add([a, b], priorities=[1.0, 3.0])
    # alpha = 1: P(b)/P(a) = 3; with 2000 draws the count ratio has a std of about 0.2.
    f = frequencies(buf, alpha=1.0)
    assert sum(f.values()) == 2000
    assert f[b.id] / f[a.id] == pytest.approx(3.0, abs=0.45)
    # alpha = 0.5: sqrt(3) ~ 1.73; alpha = 0: uniform.
    f = frequencies(buf, alpha=0.5)
    assert f[b.id] / f[a.id] == pytest.approx(math.sqrt(3), abs=0.3)
    f = frequencies(buf, alpha=0.0)
    assert f[b.id] / f[a.id] == pytest.approx(1.0, abs=0.2)
    assert ids(buf.sample(50, np.random.default_rng(3), prioritized=True)) == \
        ids(buf.sample(50, np.random.default_rng(3), prioritized=True))


def test_update_priorities_changes_sampling():
    buf = ReplayBuffer(4)
    a, b = node(1), node(2)
    buf.add([a, b], priorities=[1.0, 3.0])
    assert buf.update_priorities([a.id, "evicted/v0/9"], [9.0, 1.0]) == 1  # unknown ids are skipped
    np.testing.assert_array_equal(buf.priorities(), [9.0, 3.0])
    f = frequencies(buf, alpha=1.0)
    assert f[a.id] / f[b.id] == pytest.approx(3.0, abs=0.45)
    buf.update_priorities([a.id], [0.0])
    assert frequencies(buf, alpha=1.0)[a.id] == 0
    buf.update_priorities([b.id], [0.0])
    with pytest.raises(ValueError, match="all priorities are 0"):
        buf.sample(1, np.random.default_rng(0), prioritized=True)
    with pytest.raises(ValueError, match="priority"):
        buf.update_priorities([a.id], [math.inf])
    with pytest.raises(ValueError, match="2 ids but 1"):
        buf.update_priorities([a.id, b.id], [1.0])


def filled() -> ReplayBuffer:
    buf = ReplayBuffer(5)
    buf.add([node(1, value_target=0.5), node(2), node(3, value=NAN, terminal_reward=1.0)], priorities=[1, 2, 3])
    buf.add([traj("p"), traj("q", version=2), node(4, version=1, terminal_reward=0.0)])
    buf.add([node(2, value_target=0.25)])
    return buf


def test_save_load_round_trip_keeps_records_nans_priorities_and_samples(tmp_path):
    buf = filled()
    path = tmp_path / "ckpt" / "replay.jsonl"
    buf.save(path)
    back = ReplayBuffer.load(path)
    # node 1 was evicted; node 2 was replaced in place
    assert [type(r) for r in back] == [NodeExperience, NodeExperience, Trajectory, Trajectory, NodeExperience]
    assert all(same(x, y) for x, y in zip(buf, back)) and len(back) == len(buf)
    n2, n3 = list(back)[:2]
    assert n2.value_target == 0.25 and math.isnan(n2.terminal_reward) and math.isnan(n3.value)
    np.testing.assert_array_equal(back.priorities(), buf.priorities())
    assert back.metrics() == buf.metrics()
    for kw in ({}, {"prioritized": True}, {"prioritized": True, "alpha": 1.0}):
        assert ids(back.sample(4, np.random.default_rng(11), **kw)) == \
            ids(buf.sample(4, np.random.default_rng(11), **kw))
    # state_dict / load_state_dict round-trip in memory too, through JSON
    other = ReplayBuffer(5)
    other.load_state_dict(json.loads(json.dumps(buf.state_dict())))
    assert all(same(x, y) for x, y in zip(buf, other))


def test_load_into_smaller_capacity_evicts_oldest(tmp_path):
    buf = filled()
    buf.save(tmp_path / "r.jsonl")
    small = ReplayBuffer.load(tmp_path / "r.jsonl", capacity=2)
    assert ids(small) == ids(buf)[-2:]
    assert (small.added, small.replaced, small.evicted) == (buf.added, buf.replaced, buf.evicted + 3)
    assert len(small) == small.added - small.replaced - small.evicted


def test_save_is_atomic_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "replay.jsonl"
    filled().save(path)
    filled().save(path)  # overwrite in place
    assert os.listdir(tmp_path) == ["replay.jsonl"]
    before = path.read_text()

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    bigger = filled()
    bigger.add([node(9)])
    with pytest.raises(OSError, match="disk gone"):
        bigger.save(path)
    assert os.listdir(tmp_path) == ["replay.jsonl"]  # the temp file was removed
    assert path.read_text() == before                # the old checkpoint is intact


def test_unknown_record_type_raises_value_error(tmp_path):
    path = tmp_path / "replay.jsonl"
    filled().save(path)
    lines = path.read_text().splitlines()
    row = json.loads(lines[2])
    row["type"] = "Bogus"
    lines[2] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="Bogus"):
        ReplayBuffer.load(path)

    @dataclasses.dataclass(frozen=True)
    class Other:
        id: str
        policy_version: int = 0

    buf = ReplayBuffer(2)
    buf.add([Other("x")])  # any record with a string id can be held ...
    with pytest.raises(ValueError, match="Other"):  # ... but only registered types saved
        buf.save(tmp_path / "other.jsonl")
    assert not (tmp_path / "other.jsonl").exists()


def test_staleness_is_current_minus_policy_version():
    buf = ReplayBuffer(4)
    buf.add([node(1, version=0), traj("p", version=2), node(1, version=5)])
    st = buf.staleness(5)
    assert st.dtype == np.int64
    np.testing.assert_array_equal(st, [5, 3, 0])
    assert buf.staleness(7).tolist() == [7, 5, 2]
    assert ReplayBuffer(1).staleness(3).shape == (0,)
