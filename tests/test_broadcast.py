"""Weight transports (rl/transport.py, learners/broadcast.py): bucketing, and one sender to two receivers through Ray."""
from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from concurrent.futures import ThreadPoolExecutor

from learners.broadcast import ObjectStoreTransport
from rl.models.weights import Weights
from rl.transport import (CollectiveReceiver, CollectiveSender, contiguous_view, flatten, plan_buckets, unflatten,
                          weights_spec)

NUM_CPUS = 0.2  # three small actors share the 2-core test machine
BUCKET_MB = 1.0  # small, so the ~9 MB below spans many buckets and "w_up" (2 MB) exceeds one


def make_weights(seed: int, version: int = 0) -> Weights:
    """~2M values in float32 and int64 of several shapes (a 0-d and an empty one too); differ by version."""
    rng = np.random.default_rng(seed + 1000 * version)
    return {
        "embed": rng.standard_normal((1000, 512)).astype(np.float32),
        "tokens": rng.integers(-2**40, 2**40, size=300_000, dtype=np.int64),
        "w_up": rng.standard_normal((512, 1024)).astype(np.float32),
        "norm": rng.standard_normal(512).astype(np.float32),
        "w_down": rng.standard_normal((1024, 512)).astype(np.float32),
        "positions": rng.integers(0, 100, size=(64, 8), dtype=np.int64),
        "bias": rng.standard_normal(200_000).astype(np.float32),
        "scale": np.asarray(rng.standard_normal(), dtype=np.float32),
        "empty": np.zeros((0, 3), np.float32),
    }


def assert_same(got: Weights, want: Weights) -> None:
    assert list(got) == list(want)
    for k, w in want.items():
        g = np.asarray(got[k])
        assert g.dtype == w.dtype and g.shape == w.shape, k
        assert np.array_equal(g, w), k


# ---- bucketing (no Ray) --------------------------------------------------------------------
def test_buckets_round_trip_and_respect_the_limit():
    weights = make_weights(0)
    spec = weights_spec(weights)
    limit = int(BUCKET_MB * 2**20)
    buckets = plan_buckets(spec, limit)
    assert sorted(n for b in buckets for n in b.names) == sorted(weights)  # each tensor exactly once
    for b in buckets:
        nbytes = b.numel * np.dtype(b.dtype).itemsize
        assert all(weights[n].dtype.str == b.dtype for n in b.names)
        assert nbytes <= limit or len(b.names) == 1  # only a lone oversized tensor may exceed it
    [up] = [b for b in buckets if "w_up" in b.names]
    assert up.names == ("w_up",)  # 2 MB > 1 MB: a bucket of its own
    assert {b.dtype for b in buckets} == {"<f4", "<i8"}
    rebuilt: Weights = {}
    for b in buckets:
        flat = flatten(weights, b)
        assert flat.shape == (b.numel,) and flat.dtype == np.dtype(b.dtype)
        rebuilt.update(unflatten(flat, b))
    assert_same({k: rebuilt[k] for k in weights}, weights)


def test_parallel_packing_equals_serial_packing():
    w = make_weights(3)
    for b in plan_buckets(weights_spec(w), int(BUCKET_MB * 2**20)):
        for threads in (1, 2, 3):
            got = flatten(w, b, np.full(b.numel, 7, b.dtype), pool=ThreadPoolExecutor(threads), threads=threads)
            assert np.array_equal(got, flatten(w, b)), (b.names, threads)


def test_buckets_greedy_packing():
    spec = (("a", (10,), "<f4"), ("b", (20,), "<f4"), ("big", (100,), "<f4"), ("c", (5,), "<f4"),
            ("i", (3,), "<i8"))
    buckets = plan_buckets(spec, 30 * 4)  # 30 float32 per bucket
    assert [(b.dtype, b.names, b.offsets, b.numel) for b in buckets] == [
        ("<f4", ("a", "b"), (0, 10), 30), ("<f4", ("big",), (0,), 100), ("<f4", ("c",), (0,), 5),
        ("<i8", ("i",), (0,), 3)]


def test_flatten_copies_strided_input():
    w = {"t": np.arange(12, dtype=np.float32).reshape(3, 4).T}  # not C-contiguous
    [b] = plan_buckets(weights_spec(w), 2**20)
    assert_same(unflatten(flatten(w, b), b), {"t": np.ascontiguousarray(w["t"])})


def rendezvous(rank_call, rank0_call):
    """rank_call in a thread (a receiver rank), rank0_call here (the sender); rank_call's result."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(rank_call()))
    t.start()
    rank0_call()
    t.join(timeout=60)
    return out[0]


def as_flat_views(weights: Weights) -> Weights:
    """The same values as views of one buffer per dtype, end to end in order (as DeepSpeed ZeRO-1/2 holds them)."""
    out: Weights = {}
    for b in plan_buckets(weights_spec(weights), 2**62):  # unbounded: one bucket per dtype
        out.update(unflatten(flatten(weights, b), b))
    return {k: out[k] for k in weights}


def test_contiguous_view_only_for_tensors_laid_end_to_end():
    w = make_weights(4)
    flat = as_flat_views(w)
    buckets = plan_buckets(weights_spec(w), int(BUCKET_MB * 2**20))
    assert any(len(b.names) > 1 for b in buckets)
    for b in buckets:
        assert (contiguous_view(w, b) is None) == (len(b.names) > 1)  # separate allocations: lone tensors only
        view = contiguous_view(flat, b)  # per-dtype buffers in spec order: every bucket is one run
        assert view is not None and np.shares_memory(view, flat[b.names[0]])  # no copy
        assert np.array_equal(view, flatten(w, b))
    a = np.arange(10, dtype=np.float32)
    [b] = plan_buckets(weights_spec({"x": a[:4], "y": a[4:]}), 2**20)
    assert np.array_equal(contiguous_view({"x": a[:4], "y": a[4:]}, b), a)
    [b] = plan_buckets(weights_spec({"x": a[:4], "y": a[5:9]}), 2**20)
    assert contiguous_view({"x": a[:4], "y": a[5:9]}, b) is None  # a gap between them
    [b] = plan_buckets(weights_spec({"y": a[4:], "x": a[:4]}), 2**20)
    assert contiguous_view({"y": a[4:], "x": a[:4]}, b) is None  # adjacent, but in the other order
    ro = a.copy()
    ro.flags.writeable = False
    [b] = plan_buckets(weights_spec({"x": ro}), 2**20)
    assert contiguous_view({"x": ro}, b) is None  # torch.from_numpy needs writeable memory


def test_flat_and_separate_weights_arrive_identical():
    """Buckets sent as views of a flat buffer and buckets packed first deliver the same weights."""
    sender = CollectiveSender(make_weights(0), 1, bucket_mb=BUCKET_MB)
    receiver = CollectiveReceiver()

    rendezvous(lambda: receiver.join(sender.address(), 1), sender.join)
    version, got = rendezvous(receiver.receive, lambda: sender.publish(1, as_flat_views(make_weights(0, 1))))
    assert version == 1
    assert_same(got, make_weights(0, 1))
    del got
    version, got = rendezvous(receiver.receive, lambda: sender.publish(2, make_weights(0, 2)))
    assert version == 2
    assert_same(got, make_weights(0, 2))


def test_receiver_reuses_buffers_only_when_nothing_holds_them():
    """One process, one thread per rank: held weights survive the next receive; dropped ones are recycled."""
    sender = CollectiveSender(make_weights(0), 1, bucket_mb=BUCKET_MB)
    receiver = CollectiveReceiver()

    rendezvous(lambda: receiver.join(sender.address(), 1), sender.join)
    first = rendezvous(receiver.receive, lambda: sender.publish(1, make_weights(0, 1)))
    second = rendezvous(receiver.receive, lambda: sender.publish(2, make_weights(0, 2)))
    assert (first[0], second[0]) == (1, 2)
    assert_same(first[1], make_weights(0, 1))  # still intact: the second receive used new buffers
    assert_same(second[1], make_weights(0, 2))
    address = second[1]["embed"].__array_interface__["data"][0]  # an int: holds no reference
    del first, second
    third = rendezvous(receiver.receive, lambda: sender.publish(3, make_weights(0, 3)))
    assert_same(third[1], make_weights(0, 3))
    # a new buffer is allocated while the old one is still alive, so the same address means reuse
    assert third[1]["embed"].__array_interface__["data"][0] == address


# ---- through Ray ---------------------------------------------------------------------------
class SenderHost:
    """Stands in for the learner's rank 0: owns the weights and both sender halves."""

    def __init__(self, seed: int, num_receivers: int):
        self.seed = seed
        self.sender = CollectiveSender(make_weights(seed), num_receivers, bucket_mb=BUCKET_MB)
        self.store = ObjectStoreTransport()

    def address(self):
        return self.sender.address()

    def join(self) -> None:
        self.sender.join()

    def publish_collective(self, version: int) -> int:
        self.sender.publish(version, make_weights(self.seed, version))
        return version

    def publish_wrong(self, version: int) -> None:
        weights = make_weights(self.seed, version)
        weights["norm"] = weights["norm"][:-1]  # a shape the spec does not promise
        self.sender.publish(version, weights)

    def publish_object_store(self, version: int):
        return self.store.publish(version, make_weights(self.seed, version))


class ReceiverHost:
    """Stands in for a rollout actor: both receiver halves."""

    def __init__(self):
        self.collective = CollectiveReceiver()
        self.store = ObjectStoreTransport()

    def join(self, addr, rank: int) -> int:
        return self.collective.join(addr, rank)

    def receive_collective(self) -> tuple[int, Weights]:
        return self.collective.receive()

    def receive_object_store(self, payload) -> tuple[int, Weights]:
        version, weights = self.store.receive(payload)
        return version, {k: np.array(v) for k, v in weights.items()}  # off the shared, read-only memory


@pytest.fixture(scope="module")
def hosts():
    import ray
    from ray import cloudpickle

    from rl.runtime import runtime_env
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    opts = dict(num_cpus=NUM_CPUS, runtime_env=runtime_env(NUM_CPUS))
    sender = ray.remote(SenderHost).options(**opts).remote(seed=7, num_receivers=2)
    receivers = [ray.remote(ReceiverHost).options(**opts).remote() for _ in range(2)]
    addr = ray.get(sender.address.remote())
    joins = [r.join.remote(addr, i + 1) for i, r in enumerate(receivers)]  # receivers first: join() blocks
    assert ray.get(joins + [sender.join.remote()], timeout=120) == [1, 2, None]
    yield ray, sender, receivers
    for a in [sender, *receivers]:
        ray.kill(a)
    if started:
        ray.shutdown()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def collective_round(ray, sender, receivers, version: int) -> list[tuple[int, Weights]]:
    got = [r.receive_collective.remote() for r in receivers]
    *results, sent = ray.get(got + [sender.publish_collective.remote(version)], timeout=120)
    assert sent == version
    return results


def object_store_round(ray, sender, receivers, version: int) -> list[tuple[int, Weights]]:
    ref = ray.get(sender.publish_object_store.remote(version))
    return ray.get([r.receive_object_store.remote(ref) for r in receivers], timeout=120)


@pytest.mark.ray
def test_collective_delivers_successive_versions(hosts):
    ray, sender, receivers = hosts
    for version in (3, 4):  # new values each time, through the same group and spec
        results = collective_round(ray, sender, receivers, version)
        for got_version, weights in results:
            assert got_version == version
            assert_same(weights, make_weights(7, version))
    assert not np.array_equal(make_weights(7, 3)["embed"], make_weights(7, 4)["embed"])


@pytest.mark.ray
def test_collective_mismatch_fails_on_every_rank_then_recovers(hosts):
    ray, sender, receivers = hosts
    calls = [r.receive_collective.remote() for r in receivers] + [sender.publish_wrong.remote(6)]
    for call, error in zip(calls, ["did not match", "did not match", "norm"]):
        with pytest.raises(Exception, match=error):
            ray.get(call, timeout=120)
    [(version, weights), _] = collective_round(ray, sender, receivers, 7)  # nothing was left half-sent
    assert version == 7
    assert_same(weights, make_weights(7, 7))


@pytest.mark.ray
def test_object_store_matches_collective(hosts):
    ray, sender, receivers = hosts
    by_store = object_store_round(ray, sender, receivers, 5)
    by_group = collective_round(ray, sender, receivers, 5)
    for (v_store, w_store), (v_group, w_group) in zip(by_store, by_group):
        assert v_store == v_group == 5
        assert_same(w_store, make_weights(7, 5))
        assert_same(w_store, w_group)
