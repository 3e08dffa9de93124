"""Experience records: what rollouts send to the learner, each tagged with the versions that made it."""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rl.labels import best_trajectory, mc_value_targets
from rl.search.types import SearchResult


@dataclass(frozen=True)
class NodeExperience:
    """One searched tree node (not the root)."""
    id: str                 # "{problem_id}/v{policy_version}/{node}"; stable for a given search
    problem_id: str
    node: int
    parent: int
    depth: int
    state: str              # prompt + steps up to and including this node
    step: str               # the step text that leads to this node
    visits: int
    value: float            # mean backed-up score
    value_target: float     # Monte Carlo target (mean terminal reward below); nan if none
    terminal_reward: float  # verifier reward at a terminal node; nan otherwise
    policy_version: int
    critic_version: int
    # the critic scores the search used at this node; nan where it used none
    evaluation: float = float("nan")   # the node's leaf score (MCTS: beta-mixed V/PRM/rollouts; A*: f)
    prm: float = float("nan")          # PRM(s)
    orm: float = float("nan")          # ORM score (MCTS: mean fast-rollout score)
    q: float = float("nan")            # Q(parent state, this step) (A*)


@dataclass(frozen=True)
class Trajectory:
    """The best rewarded solution a search found for one problem."""
    id: str
    problem_id: str
    prompt: str
    solution: str
    reward: float
    policy_version: int
    critic_version: int


@dataclass(frozen=True)
class CriticExample:
    """A labelled text for one critic that a rollout worker made by generating more (not read off the tree).

    kind "value": V's label of a greedy solution (its verifier reward); kind "prm": Math-Shepherd label of a step prefix (the fraction, or any, of N completions that
    were right); kind "q": Q(s, a) from a stronger policy's completion of (s, a).
    """
    id: str                 # "{problem_id}/v{policy_version}/{kind}/{node}"
    problem_id: str
    kind: str
    text: str               # the critic's input: prompt + steps up to and including the labelled step
    target: float           # in [0, 1]
    policy_version: int


def experiences_from_search(problem_id: str, result: SearchResult, *, policy_version: int,
                            critic_version: int) -> tuple[list[NodeExperience], Trajectory | None]:
    """Node records for every non-root node, and the best rewarded trajectory (if any)."""
    tree = result.tree
    targets = mc_value_targets(tree)
    nodes = [NodeExperience(
        id=f"{problem_id}/v{policy_version}/{i}", problem_id=problem_id, node=i, parent=int(tree.parent[i]),
        depth=int(tree.depth[i]), state=tree.state(i), step=tree.text[i], visits=int(tree.visits[i]),
        value=tree.q(i), value_target=float(targets[i]), terminal_reward=float(tree.reward[i]),
        policy_version=policy_version, critic_version=critic_version, evaluation=float(tree.evaluation[i]),
        prm=float(tree.prm[i]), orm=float(tree.orm[i]), q=float(tree.step_q[i])) for i in range(1, tree.size)]
    best = best_trajectory(tree)
    traj = None if best is None else Trajectory(
        id=f"{problem_id}/v{policy_version}/traj", problem_id=problem_id, prompt=tree.prompt,
        solution=tree.steps(best), reward=float(tree.reward[best]), policy_version=policy_version,
        critic_version=critic_version)
    return nodes, traj


def value_examples(nodes: list[NodeExperience]) -> tuple[list[str], np.ndarray]:
    """(states, targets) for the value critic from the nodes that have a Monte Carlo target."""
    kept = [n for n in nodes if not np.isnan(n.value_target)]
    return [n.state for n in kept], np.array([n.value_target for n in kept], dtype=np.float32)


# --- Replay buffer -------------------------------------------------------------------------------

# Record types that can be checkpointed, by the name stored in the file.
RECORD_TYPES: dict[str, type] = {"NodeExperience": NodeExperience, "Trajectory": Trajectory}

REPLAY_FORMAT = 1  # version of the on-disk layout, checked on load


def _check_priority(p: float) -> float:
    p = float(p)
    if not (np.isfinite(p) and p >= 0.0):
        raise ValueError(f"priority must be finite and >= 0, got {p}")
    return p


class ReplayBuffer:
    """Bounded FIFO store of experience records, with uniform or prioritized sampling.

    Holds any frozen dataclass with a string `id` and an int `policy_version` (NodeExperience,
    Trajectory); only the types in RECORD_TYPES can be saved. Records are kept oldest first; past
    `capacity` the oldest are evicted.

    Re-adding an id already present replaces the record in place and keeps its age: ids are stable
    per search (they include the policy version), so a re-add is a corrected copy of the same
    experience, and moving it to the back would let a record that is re-sent often dodge eviction.
    Its priority is kept unless a new one is given, so a priority the learner set survives the re-add.

    Counters: `added` counts every record accepted (new or replacing), `replaced` those that replaced
    an existing id, `evicted` those dropped for capacity; len(buffer) == added - replaced - evicted.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self._records: OrderedDict[str, Any] = OrderedDict()  # id -> record, oldest first
        self._priority: dict[str, float] = {}
        self.added = 0
        self.replaced = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, record_id: str) -> bool:
        return record_id in self._records

    def __iter__(self) -> Iterator[Any]:
        """Records, oldest first."""
        return iter(self._records.values())

    def add(self, records: Iterable[Any], priorities: Sequence[float] | None = None) -> None:
        """Add records in order, evicting the oldest past capacity.

        Args:
            records: dataclass records with a string `id`.
            priorities: one per record (finite, >= 0); None gives new records 1.0 and keeps the
                priority of replaced ones.
        """
        records = list(records)
        if priorities is not None:
            priorities = [_check_priority(p) for p in priorities]
            if len(priorities) != len(records):
                raise ValueError(f"{len(records)} records but {len(priorities)} priorities")
        for i, r in enumerate(records):
            if not isinstance(getattr(r, "id", None), str):
                raise ValueError(f"replay record {type(r).__name__} needs a string `id`")
            if r.id in self._records:
                self.replaced += 1
            elif priorities is None:
                self._priority[r.id] = 1.0
            self._records[r.id] = r  # assigning an existing key keeps its position
            if priorities is not None:
                self._priority[r.id] = priorities[i]
            self.added += 1
        while len(self._records) > self.capacity:
            old, _ = self._records.popitem(last=False)
            del self._priority[old]
            self.evicted += 1

    def sample(self, n: int, rng: np.random.Generator, *, prioritized: bool = False,
               alpha: float = 0.6) -> list[Any]:
        """Draw n records; a pure function of the buffer contents and the rng state.

        Uniform draws are without replacement (n <= len). Prioritized draws are with replacement,
        P(i) = p_i**alpha / sum_k p_k**alpha (Schaul et al. 2016, eq. 1); alpha = 0 is uniform.
        """
        if n < 0:
            raise ValueError(f"sample size must be >= 0, got {n}")
        records = list(self._records.values())
        if n == 0:
            return []
        if not records:
            raise ValueError(f"cannot sample {n} records from an empty replay buffer")
        if not prioritized:
            if n > len(records):
                raise ValueError(f"cannot sample {n} records without replacement from {len(records)}")
            idx = rng.choice(len(records), size=n, replace=False)
        else:
            p = np.array([self._priority[r.id] for r in records], dtype=np.float64) ** alpha  # [len]
            total = p.sum()
            if not total > 0:
                raise ValueError("cannot sample by priority: all priorities are 0")
            idx = rng.choice(len(records), size=n, replace=True, p=p / total)
        return [records[i] for i in idx]

    def priorities(self) -> np.ndarray:
        """[len] float64 priorities, oldest record first."""
        return np.array([self._priority[k] for k in self._records], dtype=np.float64)

    def update_priorities(self, ids: Sequence[str], priorities: Sequence[float]) -> int:
        """Set the priorities of the given ids; returns how many were still in the buffer.

        Ids no longer present are skipped: with an asynchronous learner, records may be evicted
        between being sampled and having their priorities updated.
        """
        if len(ids) != len(priorities):
            raise ValueError(f"{len(ids)} ids but {len(priorities)} priorities")
        updated = 0
        for i, p in zip(ids, priorities):
            p = _check_priority(p)
            if i in self._records:
                self._priority[i] = p
                updated += 1
        return updated

    def staleness(self, current_version: int) -> np.ndarray:
        """[len] int64 current_version - record.policy_version, oldest record first."""
        return np.array([current_version - r.policy_version for r in self._records.values()],
                        dtype=np.int64)

    def metrics(self) -> dict[str, float]:
        """Counters under the replay/ namespace."""
        return {"replay/size": len(self), "replay/capacity": self.capacity, "replay/added": self.added,
                "replay/replaced": self.replaced, "replay/evicted": self.evicted}

    def state_dict(self) -> dict[str, Any]:
        """Capacity, counters and records (oldest first, with type name and priority), JSON-ready."""
        rows = []
        for rid, r in self._records.items():
            name = type(r).__name__
            if RECORD_TYPES.get(name) is not type(r):
                raise ValueError(f"replay record type {name!r} cannot be saved; known: {sorted(RECORD_TYPES)}")
            fields = {f.name: getattr(r, f.name) for f in dataclasses.fields(r)}
            rows.append({"type": name, "priority": self._priority[rid], "record": fields})
        return {"format": REPLAY_FORMAT, "capacity": self.capacity, "added": self.added,
                "replaced": self.replaced, "evicted": self.evicted, "records": rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace contents and counters with `state`.

        Keeps this buffer's capacity (the config may have changed since the save), evicting the oldest
        records past it.
        """
        if state.get("format") != REPLAY_FORMAT:
            raise ValueError(f"replay state format {state.get('format')!r}, expected {REPLAY_FORMAT}")
        records, priorities = [], []
        for row in state["records"]:
            cls = RECORD_TYPES.get(row["type"])
            if cls is None:
                raise ValueError(f"unknown replay record type {row['type']!r}; "
                                 f"known: {sorted(RECORD_TYPES)}")
            try:
                records.append(cls(**row["record"]))
            except TypeError as e:
                raise ValueError(f"bad {row['type']} record {row['record'].get('id')!r}: {e}") from None
            priorities.append(row["priority"])
        self._records.clear()
        self._priority.clear()
        self.add(records, priorities)
        # add() counted the restored records; put back the saved counters (plus any eviction just now).
        self.evicted = int(state["evicted"]) + (self.added - len(self))
        self.added, self.replaced = int(state["added"]), int(state["replaced"])

    def save(self, path: str | Path) -> None:
        """Write JSON Lines atomically: a header line, then one record per line.

        The file is written under a temporary name in the same directory, synced, then renamed over
        `path`, so a crash leaves either the old file or the new one, never half of one. NaN floats
        (value_target, terminal_reward) are written as the JSON extension `NaN`, which json reads back.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        rows = state.pop("records")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(state) + "\n")
                for row in rows:
                    f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path, *, capacity: int | None = None) -> ReplayBuffer:
        """Read a buffer written by save(); capacity defaults to the saved one."""
        path = Path(path)
        lines = path.read_text().splitlines()
        if not lines:
            raise ValueError(f"{path}: empty replay file")
        try:
            state = json.loads(lines[0])
            state["records"] = [json.loads(line) for line in lines[1:] if line.strip()]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a replay file ({e})") from None
        buf = cls(state["capacity"] if capacity is None else capacity)
        buf.load_state_dict(state)
        return buf
