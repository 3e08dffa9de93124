"""A bounded inbox with backpressure, in front of the replay buffer.

Rollout actors send records faster or slower than the learner drains them. The inbox holds what
has arrived but is not yet in the ReplayBuffer, and its capacity bounds the memory that a burst of
rollouts can take. What happens when it is full is the backpressure policy:

- "block": offer() takes only what fits and returns the count; the caller waits and offers the rest
  later (the replay actor awaits a drain). Nothing is lost; rollouts slow to the learner's pace.
- "drop_new": records past capacity are refused and counted as dropped. The freshest experience
  is lost; use when the learner must never wait for rollouts and old records are still wanted.
- "drop_oldest": each new record pushes out the oldest pending one, counted as dropped. Keeps the
  freshest (least stale) experience.

Plain Python (no Ray); not thread-safe: the replay actor calls it from one asyncio event loop.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any, Literal, get_args

Backpressure = Literal["block", "drop_new", "drop_oldest"]
BACKPRESSURE: tuple[str, ...] = get_args(Backpressure)


class Inbox:
    """FIFO of pending records, at most `capacity` long.

    Counters: `accepted` counts records taken into the inbox, `dropped` those lost (refused under
    "drop_new", pushed out under "drop_oldest"; "block" never drops), `blocked_seconds` the time
    callers spent waiting for room (reported through record_wait).
    """

    def __init__(self, capacity: int, policy: Backpressure = "block"):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"replay.inbox_capacity = {capacity!r}: must be an integer >= 1")
        if policy not in BACKPRESSURE:
            raise ValueError(f"replay.backpressure = {policy!r}: use one of {', '.join(BACKPRESSURE)}")
        self.capacity = capacity
        self.policy: Backpressure = policy
        self._pending: deque[Any] = deque()  # oldest first
        self.accepted = 0
        self.dropped = 0
        self.blocked_seconds = 0.0

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def room(self) -> int:
        """How many records fit before the inbox is full."""
        return self.capacity - len(self._pending)

    def offer(self, records: Iterable[Any]) -> int:
        """Queue records in order under the backpressure policy; returns how many were accepted.

        Under "block" the accepted ones are the first `room` records: offer the rest,
        records[accepted:], again once take() has made room.
        """
        records = list(records)
        if self.policy == "drop_oldest":
            self._pending.extend(records)
            over = max(0, len(self._pending) - self.capacity)
            for _ in range(over):
                self._pending.popleft()
            n, self.dropped = len(records), self.dropped + over
        else:
            n = min(len(records), self.room)
            self._pending.extend(records[:n])
            if self.policy == "drop_new":
                self.dropped += len(records) - n
        self.accepted += n
        return n

    def take(self, max_n: int | None = None) -> list[Any]:
        """Remove and return up to max_n pending records (all if None), oldest first."""
        if max_n is not None and max_n < 0:
            raise ValueError(f"take: max_n must be >= 0 or None, got {max_n}")
        n = len(self._pending) if max_n is None else min(max_n, len(self._pending))
        return [self._pending.popleft() for _ in range(n)]

    def record_wait(self, seconds: float) -> None:
        """Add time a caller spent waiting for room (under "block")."""
        if not seconds >= 0:
            raise ValueError(f"record_wait: seconds must be >= 0, got {seconds}")
        self.blocked_seconds += float(seconds)

    def metrics(self) -> dict[str, float]:
        """Counters under the replay/ namespace (they do not clash with ReplayBuffer.metrics)."""
        return {"replay/inbox_size": len(self), "replay/accepted": self.accepted,
                "replay/dropped": self.dropped, "replay/blocked_seconds": self.blocked_seconds}
