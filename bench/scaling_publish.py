"""Weight-publish latency from one sender actor to two receiver actors, against a raw broadcast.

Not a test: it measures. Usage:

    nice -n 10 python bench/scaling_publish.py                 # 10M and 100M parameters; a few minutes on 2 cores
    python bench/scaling_publish.py --sizes 10m --repeats 1     # a quick look

For each size a sender actor builds float32 weights shaped like a transformer's (an embedding, then per
layer four [d, d] attention matrices, [d, 4d] and [4d, d] MLP matrices and two [d] norms) and two
receiver actors join its broadcast group (rl/transport.py). One round of each transport is
timed from the driver, from the first call to the last reply:
  object_store       sender ray.put's {version, weights}; both receivers ray.get it (numpy arrays that
                     are zero-copy, read-only views of the node's shared memory)
  object_store_copy  the same, and the receivers copy each array into private memory (what the
                     collective gives them; not in the ratios, for reference)
  collective         CollectiveSender.publish -> CollectiveReceiver.receive: version, then per-dtype buckets, received
                     into the buffers of the previous round (--hold: into new ones). The weights are views of one
                     flat buffer, as the learner publishes them under ZeRO-1/2 (DeepSpeed flattens each model's
                     parameters), so buckets go out without a packing copy
  collective_separate  the same with one allocation per tensor (ZeRO-3's gathered parameters, or stage 0):
                     every bucket is packed first
  raw                one broadcast of ONE flat, preallocated float32 buffer of the same size over the same
                     group: the floor the collective transport is measured against
`--warmup` untimed rounds of each, then `--repeats` rounds with the transports interleaved, each round after
`--gap` seconds of idle (in training a publish follows a training phase; back to back, a put can race the
store's asynchronous free of the previous version and land on pages it must fault in again: 15.7k minor
faults and ~70 ms for a 40 MB put here, against ~50 faults and ~14 ms on pages the freed version left mapped).
The medians are reported, and ratio = transport seconds / raw seconds. Writes JSON to --out, with
bench/provenance.py's commit, versions and machine at its top level.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every Ray process binds to 127.0.0.1

import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.provenance import provenance  # noqa: E402
from learners.broadcast import ObjectStoreTransport  # noqa: E402
from rl.models.weights import Weights  # noqa: E402
from rl.runtime import runtime_env  # noqa: E402
from rl.transport import (BUCKET_MB, CollectiveReceiver, CollectiveSender, broadcast_async,  # noqa: E402
                          flatten, plan_buckets, unflatten, weights_spec)

# (d_model, layers, vocab): 12 d^2 + 2 d per layer, plus a [vocab, d] embedding
SIZES = {"10m": (512, 3, 1024),       # 9.96M parameters, 40 MB
         "100m": (1024, 7, 12288)}    # 100.7M parameters, 403 MB
NUM_CPUS = 0.2  # three actors and the driver share 2 cores; the bytes move through the kernel anyway
TRANSPORTS = ("object_store", "object_store_copy", "collective", "collective_separate", "raw")


def transformer_weights(d: int, layers: int, vocab: int, seed: int = 0, *, flat: bool = False) -> Weights:
    """Separate arrays, or (flat=True) views of one flat buffer in the same order, the way DeepSpeed
    ZeRO-1/2 holds a model's parameters (the learner's published weights are such views)."""
    rng = np.random.default_rng(seed)

    def mat(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    w = {"embed": mat(vocab, d)}
    for i in range(layers):
        w |= {f"layers.{i}.attn.{p}": mat(d, d) for p in "qkvo"}
        w |= {f"layers.{i}.mlp.up": mat(d, 4 * d), f"layers.{i}.mlp.down": mat(4 * d, d),
              f"layers.{i}.norm1": np.ones(d, np.float32), f"layers.{i}.norm2": np.ones(d, np.float32)}
    if not flat:
        return w
    [bucket] = plan_buckets(weights_spec(w), 2**62)  # one float32 bucket of everything, in order
    return unflatten(flatten(w, bucket), bucket)


class BenchSender:
    def __init__(self, size: str, num_receivers: int, bucket_mb: float):
        self.weights = transformer_weights(*SIZES[size], flat=True)  # as the ZeRO-1/2 learner publishes them
        self.separate = transformer_weights(*SIZES[size])            # one allocation per tensor (ZeRO-3, stage 0)
        self.sender = CollectiveSender(self.weights, num_receivers, bucket_mb=bucket_mb)
        self.store = ObjectStoreTransport()
        self.flat = torch.from_numpy(np.ones(sum(v.size for v in self.weights.values()), np.float32))

    def address(self):
        return self.sender.address()

    def join(self) -> None:
        self.sender.join()

    def info(self) -> dict:
        return {"params": int(self.flat.numel()), "bytes": int(self.flat.numel() * 4),
                "tensors": len(self.weights), "buckets": len(self.sender.buckets)}

    def publish_collective(self, version: int, separate: bool) -> None:
        self.sender.publish(version, self.separate if separate else self.weights)

    def publish_object_store(self, version: int) -> ray.ObjectRef:
        return self.store.publish(version, self.weights)

    def raw(self) -> None:
        broadcast_async(self.sender.group, self.flat).wait()


class BenchReceiver:
    def __init__(self, hold: bool):
        self.collective = CollectiveReceiver()
        self.store = ObjectStoreTransport()
        self.flat: torch.Tensor | None = None
        self.hold, self.held = hold, None

    def join(self, addr, rank: int) -> None:
        self.collective.join(addr, rank)
        numel = sum(int(np.prod(shape)) for _, shape, _ in addr.spec)
        self.flat = torch.from_numpy(np.empty(numel, np.float32))  # preallocated, as a raw broadcast would be

    def receive_collective(self) -> int:
        version, weights = self.collective.receive()
        if self.hold:  # the next receive() cannot reuse these buffers
            self.held = weights
        return sum(v.nbytes for v in weights.values())

    def receive_object_store(self, payload, copy: bool) -> int:
        version, weights = self.store.receive(payload)
        if copy:
            weights = {k: np.array(v) for k, v in weights.items()}
        return sum(v.nbytes for v in weights.values())

    def raw(self) -> int:
        broadcast_async(self.collective.group, self.flat).wait()
        return self.flat.numel() * 4


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(size: str, repeats: int, bucket_mb: float, hold: bool, warmup: int, gap: float) -> dict:
    opts = dict(num_cpus=NUM_CPUS, runtime_env=runtime_env(NUM_CPUS))
    sender = ray.remote(BenchSender).options(**opts).remote(size, 2, bucket_mb)
    receivers = [ray.remote(BenchReceiver).options(**opts).remote(hold) for _ in range(2)]
    addr = ray.get(sender.address.remote())
    ray.get([r.join.remote(addr, i + 1) for i, r in enumerate(receivers)] + [sender.join.remote()])
    info = ray.get(sender.info.remote())
    version = 0

    def object_store(copy: bool) -> None:
        nonlocal version
        version += 1
        ref = ray.get(sender.publish_object_store.remote(version))
        got = ray.get([r.receive_object_store.remote(ref, copy) for r in receivers])
        assert got == [info["bytes"]] * 2
        del ref  # frees the store for the next round

    def collective(separate: bool) -> None:
        nonlocal version
        version += 1
        got = [r.receive_collective.remote() for r in receivers]  # receivers first: they block in receive()
        assert ray.get(got + [sender.publish_collective.remote(version, separate)])[:2] == [info["bytes"]] * 2

    def raw() -> None:
        got = [r.raw.remote() for r in receivers]
        assert ray.get(got + [sender.raw.remote()])[:2] == [info["bytes"]] * 2

    rounds = {"object_store": lambda: object_store(False), "object_store_copy": lambda: object_store(True),
              "collective": lambda: collective(False), "collective_separate": lambda: collective(True), "raw": raw}
    seconds: dict[str, list[float]] = {k: [] for k in TRANSPORTS}
    cold: dict[str, list[float]] = {k: [] for k in TRANSPORTS}
    for rep in range(warmup + repeats):  # warm-up rounds: connections, workers, first touch of store memory
        for name in TRANSPORTS:
            time.sleep(gap)  # a training phase separates publishes; the store frees the last version meanwhile
            t = timed(rounds[name])
            (seconds if rep >= warmup else cold)[name].append(t)
    for a in [sender, *receivers]:
        ray.kill(a)
    res = {**info, "seconds": {k: float(np.median(v)) for k, v in seconds.items()}, "rounds": seconds,
           "warmup_rounds": cold}
    res["ratio"] = {k: res["seconds"][k] / res["seconds"]["raw"] for k in TRANSPORTS if k != "raw"}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10m,100m", help=f"comma-separated, from {', '.join(SIZES)}")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds per transport after the warm-up")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds per transport first")
    ap.add_argument("--gap", type=float, default=0.5, help="seconds of idle before every round (any transport)")
    ap.add_argument("--bucket-mb", type=float, default=BUCKET_MB)
    ap.add_argument("--hold", action="store_true",
                    help="collective receivers keep the last weights alive, so each receive needs new buffers")
    ap.add_argument("--out", default="docs/results/scaling_publish.json")
    args = ap.parse_args()
    sizes = args.sizes.split(",")
    if unknown := [s for s in sizes if s not in SIZES]:
        ap.error(f"unknown sizes {unknown}: use {', '.join(SIZES)}")

    load_at_start = os.getloadavg()  # other jobs on a shared machine make single rounds noisy
    prov = provenance()  # before measuring: the code and packages that ran
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results = {s: measure(s, args.repeats, args.bucket_mb, args.hold, args.warmup, args.gap) for s in sizes}
    ray.shutdown()

    out: dict = {**prov,
                 "machine_details": {"cores": os.cpu_count(), "torch": torch.__version__, "ray": ray.__version__,
                                     "python": platform.python_version(), "load_average_at_start": load_at_start,
                                     "load_average_at_end": os.getloadavg()},
                 "setup": {"receivers": 2, "bucket_mb": args.bucket_mb, "repeats": args.repeats,
                           "warmup": args.warmup, "gap_seconds": args.gap, "hold": args.hold,
                           "statistic": f"median after {args.warmup} warm-up rounds"},
                 "sizes": results}
    for s, r in results.items():
        out[f"raw_broadcast_seconds_{s}"] = r["seconds"]["raw"]
        for k in ("object_store", "collective", "collective_separate"):
            out[f"publish_seconds_{k}_{s}"] = r["seconds"][k]
            out[f"publish_ratio_{k}_{s}"] = r["ratio"][k]

    print(f"\n{'size':>5} {'params':>12} {'MB':>7} {'buckets':>7} | "
          + " ".join(f"{k:>17}" for k in TRANSPORTS) + " | seconds (ratio to raw)")
    for s, r in results.items():
        cells = [f"{r['seconds'][k]:8.3f} ({r['seconds'][k] / r['seconds']['raw']:4.2f}x)" for k in TRANSPORTS]
        print(f"{s:>5} {r['params']:>12,} {r['bytes'] / 2**20:7.1f} {r['buckets']:>7} | "
              + " ".join(f"{c:>17}" for c in cells))
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
