"""Weight transports by name, and the object-store one: how the learner's weights reach the rollout actors.

Two ways to move a `Weights` dict (rl/models/weights.py) from the learner's rank 0 to N receivers,
chosen by name with make_sender(name, ...) / make_receiver(name) (names in TRANSPORTS):

  object_store  the sender does one ray.put of {version, weights} and hands out the ref; receivers
                ray.get it. On one machine they map the same shared memory (zero-copy, read-only
                arrays), which made it the fastest publish on a single node. It needs Ray, so it is here.
  collective    a broadcast group of its own (rl/transport.py: plain torch.distributed, which the rollout
                actors import from there too, so actors/ and learners/ never import each other).
"""
from __future__ import annotations

from typing import Any

import ray

from rl.models.weights import Weights
from rl.transport import BUCKET_MB, CollectiveReceiver, CollectiveSender, WeightReceiver, WeightSender

TRANSPORTS = ("object_store", "collective")


# ---- object store --------------------------------------------------------------------------
class ObjectStoreTransport:
    """Both halves of the object-store transport (it holds no state)."""

    def publish(self, version: int, weights: Weights) -> ray.ObjectRef:
        return ray.put({"version": version, "weights": weights})

    def receive(self, payload: Any = None) -> tuple[int, Weights]:
        """payload: the ref from publish(), or what Ray made of it when passed as a task argument."""
        msg = ray.get(payload) if isinstance(payload, ray.ObjectRef) else payload
        return msg["version"], msg["weights"]


def make_sender(name: str, weights: Weights, *, num_receivers: int, bucket_mb: float = BUCKET_MB) -> WeightSender:
    """The sender half of transport `name`; a CollectiveSender still needs join()."""
    if name == "object_store":
        return ObjectStoreTransport()
    if name == "collective":
        return CollectiveSender(weights, num_receivers, bucket_mb=bucket_mb)
    raise ValueError(f"weight transport {name!r}: use one of {', '.join(TRANSPORTS)}")


def make_receiver(name: str) -> WeightReceiver:
    """The receiver half of transport `name`; a CollectiveReceiver still needs join()."""
    if name == "object_store":
        return ObjectStoreTransport()
    if name == "collective":
        return CollectiveReceiver()
    raise ValueError(f"weight transport {name!r}: use one of {', '.join(TRANSPORTS)}")
