"""The replay actor: rollout actors put experience into it directly, the learner side drains and samples.

Records go from a rollout actor to this actor without passing through the driver. They wait in an
rl.inbox.Inbox (bounded, with a backpressure policy) until drain() moves them into the
rl.experience.ReplayBuffer, which the learner samples. Draining is explicit so that a sample sees a
fixed buffer: records that arrive while the learner samples wait in the inbox.

An asyncio actor: a put() that waits for room (under "block") awaits on the event loop, so drain(),
sample() and metrics() still run meanwhile. All methods run on that one loop, one at a time between
awaits, so the plain classes need no locks.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from rl.experience import ReplayBuffer
from rl.inbox import Backpressure, Inbox


class ReplayHost:
    """A ReplayBuffer behind an Inbox; the logic is theirs, this only waits for room and routes calls."""

    def __init__(self, capacity: int, *, inbox_capacity: int = 10000, backpressure: Backpressure = "block"):
        self.buffer = ReplayBuffer(capacity)
        self.inbox = Inbox(inbox_capacity, backpressure)
        self._room = asyncio.Event()  # set by drain(); wakes puts waiting for room

    async def put(self, records: list[Any]) -> int:
        """Queue records; returns how many were accepted (all of them under "block" and "drop_oldest").

        Under "block" this returns only once every record is in the inbox, waiting for drain() as
        often as needed; the wait is recorded in replay/blocked_seconds.
        """
        records = list(records)
        if self.inbox.policy != "block":
            return self.inbox.offer(records)
        total, start = len(records), None
        while True:
            records = records[self.inbox.offer(records):]
            if not records:
                break
            if start is None:
                start = time.monotonic()
            self._room.clear()
            await self._room.wait()
        if start is not None:
            self.inbox.record_wait(time.monotonic() - start)
        return total

    def _unique(self, records: list[Any]) -> list[Any]:
        """Records by id, the last delivery of an id kept: a chunk searched again after its rollout actor died
        may deliver the same (stable, per-problem seeded) records twice; they count once."""
        by_id = {r.id: r for r in records}
        self.duplicates = getattr(self, "duplicates", 0) + len(records) - len(by_id)
        return list(by_id.values())

    async def drain(self, max_n: int | None = None) -> int:
        """Move up to max_n pending records (all if None) into the buffer, oldest first; returns the count."""
        records = self._unique(self.inbox.take(max_n))
        self.buffer.add(records)
        self._room.set()
        return len(records)

    async def drain_new(self) -> list[Any]:
        """Move every pending record into the buffer and return exactly those records.

        The learner receives this as an object ref (the driver passes the ref on without reading it):
        the records that arrived since the last drain, i.e. one round's experience.
        """
        records = self._unique(self.inbox.take(None))
        self.buffer.add(records)
        self._room.set()
        return records

    async def sample(self, n: int, seed: int, prioritized: bool = False) -> list[Any]:
        """n records drawn by ReplayBuffer.sample with a generator seeded by `seed` (reproducible)."""
        return self.buffer.sample(n, np.random.default_rng(seed), prioritized=prioritized)

    async def records(self, max_staleness: int | None, current_version: int) -> list[Any]:
        """Buffered records, oldest first, with current_version - policy_version <= max_staleness (None: all)."""
        if max_staleness is None:
            return list(self.buffer)
        stale = self.buffer.staleness(current_version)  # [len], oldest first like iteration
        return [r for r, s in zip(self.buffer, stale) if s <= max_staleness]

    async def metrics(self) -> dict[str, float]:
        return {**self.inbox.metrics(), **self.buffer.metrics(),
                "replay/duplicates": float(getattr(self, "duplicates", 0))}

    async def size(self) -> int:
        """Records in the buffer (not counting the inbox; see replay/inbox_size)."""
        return len(self.buffer)

    async def save(self, path: str) -> int:
        """Write the buffer (not the inbox: pending records are in flight, like those still in rollout
        actors) with ReplayBuffer.save; returns the number of records saved."""
        self.buffer.save(Path(path))
        return len(self.buffer)

    async def load(self, path: str) -> int:
        """Replace the buffer with a saved one, keeping this buffer's capacity; returns its size."""
        self.buffer = ReplayBuffer.load(Path(path), capacity=self.buffer.capacity)
        return len(self.buffer)


# It mostly waits on puts and drains: a tenth of a CPU keeps it from taking a rollout actor's slot.
ReplayActor = ray.remote(num_cpus=0.1)(ReplayHost)
