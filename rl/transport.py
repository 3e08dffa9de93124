"""The collective weight transport: learner rank 0 broadcasts `Weights` to N rollout actors.

Plain torch.distributed (no Ray, no DeepSpeed), so both sides import it from here: the sender lives in
learner rank 0 (learners/group.py, `LearnerRank`), the receivers in the rollout actors
(actors/rollout.py, `RolloutShell`). The object-store transport needs Ray and stays in learners/broadcast.py.

A broadcast group of its own: gloo on CPU, nccl with CUDA. Rank 0 is the sender, ranks 1..N the
receivers. The spec (names, shapes, dtypes) is fixed when the group is built; each publish broadcasts
the version as a tensor, then the weights packed end to end in per-dtype buckets of at most bucket_mb
megabytes, bucket by bucket.

The group is built from its own TCPStore (behind a PrefixStore) and ProcessGroupGloo/ProcessGroupNCCL
constructed directly, not with init_process_group, so it sits beside the learner's default (DeepSpeed)
group. The store listens on a socket already bound to `host` (bind_free_port), and on loopback gloo's
device is pinned to that address too: nothing listens on other interfaces.

Both sides block until every rank is there, so the driver starts the receivers' calls before it waits
on the sender's, for the set-up and for every publish (`LearnerGroup.publish`, learners/group.py):

    addr = ray.get([r.open_broadcast.remote(n, bucket_mb) for r in ranks])[0]   # CollectiveSender.address()
    ray.get(pool.join_broadcast(addr) + [ranks[0].join_broadcast.remote()])   # CollectiveReceiver.join, .join()
    received = pool.receive_broadcast()                                         # CollectiveReceiver.receive()
    ray.get([r.publish_broadcast.remote() for r in ranks])                      # CollectiveSender.publish()

Under ZeRO-3 the parameters are partitioned across learner ranks: gather them first and publish from
rank 0 only (Learner.weights() gathers inside deepspeed.zero.GatheredParameters).
"""
from __future__ import annotations

import ctypes
import datetime
import ipaddress
import math
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist

from rl.models.weights import Weights

Spec = tuple[tuple[str, tuple[int, ...], str], ...]  # (name, shape, numpy dtype.str) in send order

# 64 MB: packing bucket k+1 overlaps the broadcast of bucket k, so only the first bucket's copy is
# exposed. On 2 cores, 100M fp32 parameters came within noise of one raw broadcast with 4-64 MB
# buckets, and 1.3-1.6x slower with 256 MB (bench/scaling_publish.py).
BUCKET_MB = 64.0
# Threads that pack a bucket: a 40 MB bucket of 25 tensors packed in 6.0 ms with one thread, 3.8 ms with
# two, on this 2-core machine (the receivers wait in the broadcast meanwhile, so the cores are free).
PACK_THREADS = 2
GROUP_PREFIX = "arbor/weights/"  # this group's keys in its store
ABORT = -1  # version broadcast when the sender's weights do not match the spec


class WeightSender(Protocol):
    def publish(self, version: int, weights: Weights) -> Any:
        """Send the weights; returns what the receivers' receive() takes (None for collective)."""


class WeightReceiver(Protocol):
    def receive(self, payload: Any = None) -> tuple[int, Weights]: ...


# ---- torch.distributed set-up -------------------------------------------------------------
def backend() -> str:
    """nccl with CUDA, gloo on CPU."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def bind_free_port(host: str = "127.0.0.1") -> socket.socket:
    """A listening socket on a free port of host; its fd is handed to the TCPStore so it never binds 0.0.0.0."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    s.listen(128)
    return s


# ---- buckets -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bucket:
    """Tensors of one dtype laid end to end in one flat buffer of `numel` elements."""
    dtype: str
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]  # element offset of each tensor in the buffer
    numel: int


def weights_spec(weights: Weights) -> Spec:
    return tuple((k, tuple(np.shape(v)), np.asarray(v).dtype.str) for k, v in weights.items())


def plan_buckets(spec: Spec, bucket_bytes: int) -> list[Bucket]:
    """Group tensors by dtype (in order of first appearance), then pack them in spec order into
    buckets of at most bucket_bytes; a tensor larger than that gets a bucket of its own."""
    by_dtype: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for name, shape, dtype in spec:
        by_dtype.setdefault(dtype, []).append((name, shape))
    buckets = []
    for dtype, items in by_dtype.items():
        itemsize, cur, nbytes = np.dtype(dtype).itemsize, [], 0
        for name, shape in items:
            size = math.prod(shape) * itemsize
            if cur and nbytes + size > bucket_bytes:
                buckets.append(_bucket(dtype, cur))
                cur, nbytes = [], 0
            cur.append((name, shape))
            nbytes += size
        if cur:
            buckets.append(_bucket(dtype, cur))
    return buckets


def _bucket(dtype: str, items: list[tuple[str, tuple[int, ...]]]) -> Bucket:
    sizes = [math.prod(shape) for _, shape in items]
    return Bucket(dtype, tuple(n for n, _ in items), tuple(s for _, s in items),
                  tuple(accumulate(sizes[:-1], initial=0)), sum(sizes))


def flatten(weights: Weights, bucket: Bucket, out: np.ndarray | None = None, *,
            pool: ThreadPoolExecutor | None = None, threads: int = 1) -> np.ndarray:
    """The bucket's tensors copied end to end into a flat [numel] array (`out`, if given).

    With a pool, the tensors are split over `threads` of its threads (numpy copies release the GIL).
    """
    out = np.empty(bucket.numel, bucket.dtype) if out is None else out
    items = list(zip(bucket.names, bucket.shapes, bucket.offsets))

    def copy(part: list[tuple[str, tuple[int, ...], int]]) -> None:
        for name, shape, off in part:
            out[off:off + math.prod(shape)].reshape(shape)[...] = weights[name]  # one copy, even from strided input

    if pool is None or threads <= 1:
        copy(items)
    else:
        list(pool.map(copy, [items[i::threads] for i in range(threads)]))  # interleaved: similar sizes per thread
    return out


def contiguous_view(weights: Weights, bucket: Bucket) -> np.ndarray | None:
    """The bucket's tensors as one flat [numel] view, when they already lie end to end in memory in bucket
    order (writeable, C-contiguous, the bucket's dtype); else None.

    DeepSpeed ZeRO-1/2 keeps a model's parameters as views of one flat buffer, so the learner's weights mostly
    do: such a bucket is broadcast straight from the parameters, with no packing copy. The view does not own
    the memory: it is valid only while `weights` (which holds the arrays) is alive, i.e. during the publish.
    """
    start = end = None
    for name in bucket.names:
        w = weights[name]
        if not (isinstance(w, np.ndarray) and w.flags.c_contiguous and w.flags.writeable
                and w.dtype.str == bucket.dtype):
            return None
        if w.size == 0:  # holds no bytes, and numpy may point an empty view anywhere
            continue
        ptr = w.__array_interface__["data"][0]
        if end is not None and ptr != end:
            return None
        start = ptr if start is None else start
        end = ptr + w.nbytes
    if start is None or end - start != bucket.numel * np.dtype(bucket.dtype).itemsize:  # (None: all empty)
        return None
    return np.frombuffer((ctypes.c_char * (end - start)).from_address(start), dtype=bucket.dtype)


def unflatten(flat: np.ndarray, bucket: Bucket) -> Weights:
    """Views of a flat [numel] array, one per tensor of the bucket (no copy)."""
    return {name: flat[off:off + math.prod(shape)].reshape(shape)
            for name, shape, off in zip(bucket.names, bucket.shapes, bucket.offsets)}


def spec_mismatch(spec: Spec, weights: Weights) -> str | None:
    """Why weights do not match spec (names, shapes, dtypes), or None when they do."""
    if [name for name, *_ in spec] != list(weights):
        want, got = {name for name, *_ in spec}, set(weights)
        return f"missing {sorted(want - got)[:3]}, extra {sorted(got - want)[:3]} (or another order)"
    for name, shape, dtype in spec:
        w = np.asarray(weights[name])
        if w.shape != shape or w.dtype.str != dtype:
            return f"{name}: {w.shape} {w.dtype.str}, spec says {shape} {dtype}"
    return None


# ---- collective ----------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupAddress:
    """What a receiver needs to join: where the store is and what will be sent (sent once)."""
    host: str
    port: int
    world_size: int  # 1 sender + receivers
    spec: Spec
    bucket_bytes: int
    backend: str  # "gloo" | "nccl", the sender's choice, so every rank agrees
    timeout_s: float


def _make_group(addr: GroupAddress, rank: int, store: dist.Store) -> dist.ProcessGroup:
    store = dist.PrefixStore(GROUP_PREFIX, store)
    timeout = datetime.timedelta(seconds=addr.timeout_s)
    if addr.backend == "nccl":  # each rank on its own GPU
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, addr.world_size, opts)
    if not ipaddress.ip_address(addr.host).is_loopback:  # gloo's own default device (GLOO_SOCKET_IFNAME)
        return dist.ProcessGroupGloo(store, rank, addr.world_size, timeout)
    opts = dist.ProcessGroupGloo._Options()
    opts._timeout = timeout
    opts._devices = [dist.ProcessGroupGloo.create_device(hostname=addr.host)]  # listen on loopback only
    return dist.ProcessGroupGloo(store, rank, addr.world_size, opts)


def _device(backend_name: str) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if backend_name == "nccl" else torch.device("cpu")


def broadcast_async(group: dist.ProcessGroup, tensor: torch.Tensor) -> Any:
    """Start broadcasting tensor from rank 0 of group (in place on the others); returns the Work."""
    opts = dist.BroadcastOptions()
    opts.rootRank, opts.rootTensor = 0, 0
    return group.broadcast([tensor], opts)


class CollectiveSender:
    """Rank 0 of a weight broadcast group; lives in the learner's rank-0 process.

    A bucket whose tensors already lie end to end in memory (one contiguous tensor, or the views of a flat
    parameter buffer that DeepSpeed ZeRO-1/2 keeps) is sent straight from the caller's arrays without a copy;
    other buckets are packed into buffers allocated once and reused.
    """

    def __init__(self, spec: Spec | Weights, num_receivers: int, *, bucket_mb: float = BUCKET_MB,
                 host: str = "127.0.0.1", timeout_s: float = 300.0):
        self.spec = spec if isinstance(spec, tuple) else weights_spec(spec)
        bucket_bytes = int(bucket_mb * 2**20)
        self.buckets = plan_buckets(self.spec, bucket_bytes)
        self._sock = bind_free_port(host)  # kept open: the store serves on it
        port = self._sock.getsockname()[1]
        self._addr = GroupAddress(host, port, num_receivers + 1, self.spec, bucket_bytes, backend(), timeout_s)
        # wait_for_workers=False: receivers may connect before or after join() starts
        self._store = dist.TCPStore(host, port, num_receivers + 1, is_master=True, wait_for_workers=False,
                                    timeout=datetime.timedelta(seconds=timeout_s),
                                    master_listen_fd=self._sock.fileno())
        self._bufs = [np.empty(b.numel, b.dtype) if len(b.names) > 1 else None for b in self.buckets]
        self._pack_pool = ThreadPoolExecutor(PACK_THREADS, thread_name_prefix="arbor-pack")
        self.device = _device(self._addr.backend)
        self.group: dist.ProcessGroup | None = None

    def address(self) -> GroupAddress:
        return self._addr

    def join(self) -> None:
        """The sender's rendezvous; returns once every receiver has joined too."""
        self.group = _make_group(self._addr, 0, self._store)

    def publish(self, version: int, weights: Weights) -> None:
        """Broadcast version, then the weights bucket by bucket; returns when all is sent.

        Raises ValueError (after telling the receivers, who raise too) if weights do not match the spec.
        """
        problem = f"version {ABORT} is reserved" if version == ABORT else spec_mismatch(self.spec, weights)
        works = [broadcast_async(self.group, torch.tensor([ABORT if problem else version], device=self.device))]
        sent = []  # keeps device copies alive until their broadcasts finish
        for b, buf in zip(self.buckets, self._bufs):  # packs bucket k+1 while bucket k is on the wire
            # after an abort the receivers still expect every bucket (they post them with the version): send
            # empty ones of the right size, once, on this error path only
            t = torch.from_numpy(np.zeros(b.numel, b.dtype) if problem else self._packed(weights, b, buf,
                                                                                         self._pack_pool))
            sent.append(t.to(self.device))
            works.append(broadcast_async(self.group, sent[-1]))
        for w in works:
            w.wait()
        if problem:
            raise ValueError(f"weights do not match the broadcast spec: {problem}")

    @staticmethod
    def _packed(weights: Weights, b: Bucket, buf: np.ndarray | None, pool: ThreadPoolExecutor) -> np.ndarray:
        """The bucket as one flat array: a view when its tensors lie end to end already (one contiguous
        tensor, or a flat parameter buffer), else packed into buf (a copy of a lone strided tensor if None)."""
        view = contiguous_view(weights, b)  # torch.from_numpy wants a writeable array: the view checks it
        if view is not None:
            return view
        if buf is not None:
            return flatten(weights, b, buf, pool=pool, threads=PACK_THREADS)
        return np.array(weights[b.names[0]]).reshape(-1)


class CollectiveReceiver:
    """Ranks 1..N of a weight broadcast group; plain enough to wrap in ray.remote.

    On CPU, receive() writes into the previous receive()'s buffers when no array from them is still
    alive (CPython reference counts), else into new ones: returned arrays are never overwritten, and
    a receiver that copies the weights into a model and drops them reuses its buffers, which avoids
    first-touch page faults that cost several times the broadcast itself (bench/scaling_publish.py).
    With nccl the buffers stay on the GPU and the weights come back as fresh host copies.
    """

    def __init__(self):
        self.group: dist.ProcessGroup | None = None

    def join(self, addr: GroupAddress, rank: int) -> int:
        """Join the group as `rank` (1..N); returns once every rank has joined."""
        if not 1 <= rank < addr.world_size:
            raise ValueError(f"receiver rank {rank}: use 1..{addr.world_size - 1}")
        self.addr, self.rank = addr, rank
        self.buckets = plan_buckets(addr.spec, addr.bucket_bytes)
        self.device = _device(addr.backend)
        self._store = dist.TCPStore(addr.host, addr.port, addr.world_size, is_master=False,
                                    timeout=datetime.timedelta(seconds=addr.timeout_s))
        self.group = _make_group(addr, rank, self._store)
        if self.device.type == "cpu":
            self._bufs: list = [np.empty(b.numel, b.dtype) for b in self.buckets]
            self._idle_refs = sys.getrefcount(self._bufs[0]) if self._bufs else 0  # held by the list alone
        else:
            self._bufs = [torch.empty(b.numel, dtype=torch.from_numpy(np.empty(0, b.dtype)).dtype, device=self.device)
                          for b in self.buckets]
        return rank

    def _free_buffer(self, i: int) -> np.ndarray | torch.Tensor:
        """Bucket i's buffer if nothing else holds it (or views of it), else a new one."""
        if self.device.type == "cpu" and sys.getrefcount(self._bufs[i]) > self._idle_refs:
            self._bufs[i] = np.empty(self.buckets[i].numel, self.buckets[i].dtype)
        return self._bufs[i]

    def receive(self, payload: Any = None) -> tuple[int, Weights]:
        """Wait for the next publish; returns (version, weights) in spec order. payload is unused."""
        version = torch.zeros(1, dtype=torch.int64, device=self.device)
        bufs = [self._free_buffer(i) for i in range(len(self.buckets))]
        tensors = [torch.from_numpy(b) if isinstance(b, np.ndarray) else b for b in bufs]
        # the version and every bucket posted at once: no round trip between them (an aborting sender
        # still sends every bucket, so these complete either way)
        works = [broadcast_async(self.group, version)] + [broadcast_async(self.group, t) for t in tensors]
        works[0].wait()
        if int(version) == ABORT:
            for w in works[1:]:
                w.wait()
            raise RuntimeError("the sender aborted this publish (its weights did not match the broadcast spec)")
        works = works[1:]
        weights: Weights = {}
        for b, buf, work in zip(self.buckets, bufs, works):
            work.wait()
            weights.update(unflatten(buf if isinstance(buf, np.ndarray) else buf.cpu().numpy(), b))
        return int(version), {name: weights[name] for name, *_ in self.addr.spec}
