"""The learner group: M DeepSpeed ranks as Ray actors forming one torch.distributed group.

Rank 0 picks the address: it binds a free port on its own node (`LearnerRank.address`), and every
rank then builds its `learners.learner.Learner` concurrently, meeting in init_group. The ranks sit
in one placement group (PACK: on as few nodes as possible), each with learner.num_cpus and
learner.num_gpus; with GPUs Ray gives each rank its own device (CUDA_VISIBLE_DEVICES), so
LOCAL_RANK is 0 in every process and the backend is nccl; on CPU it is gloo.

Methods run on every rank (data parallel: each trains on its slice of the global batch) and
return rank 0's result:

    group = LearnerGroup(cfg, policy_path, value_path)
    metrics = group.call(Learner.train_policy, prompts, completions)
"""
from __future__ import annotations

from typing import Any, Callable

import ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from learners.learner import Learner
from rl.config import Config
from rl.models.weights import join_models
from rl.runtime import runtime_env, threads_for
from rl.transport import CollectiveSender, GroupAddress, bind_free_port

READY_TIMEOUT_S = 120


@ray.remote
class LearnerRank:
    """One rank: holds the listening socket (rank 0) until the Learner is built, then runs its methods."""

    def __init__(self, rank: int):
        self.rank = rank
        self.learner: Learner | None = None
        self._sock = None

    def address(self) -> tuple[str, int]:
        """Rank 0: bind a free port on this node's address (127.0.0.1 on a loopback-only cluster)."""
        self._sock = bind_free_port(ray.util.get_node_ip_address())
        return self._sock.getsockname()[:2]

    def start(self, cfg: Config, policy_path: str, value_path: str, world_size: int,
              master: tuple[str, int], rollout_path: str | None = None) -> int:
        lc = cfg.learner
        self.learner = Learner(lc, policy_path, value_path, seed=cfg.seed, num_threads=threads_for(lc.num_cpus),
                               rank=self.rank, world_size=world_size, master=master, listen_socket=self._sock,
                               rollout_path=rollout_path)
        return self.rank

    def run(self, method: Callable, *args, **kwargs) -> Any:
        """method is a Learner method (e.g. Learner.train_policy), called on this rank's learner."""
        return method(self.learner, *args, **kwargs)

    # ---- the collective weight transport (rank 0 is the sender) ------------------------
    def open_broadcast(self, num_receivers: int, bucket_mb: float) -> GroupAddress | None:
        """Every rank calls it: gathering the weights is a collective under ZeRO-3 (a rank left out would leave
        rank 0 waiting in GatheredParameters). Rank 0 then opens a broadcast group for their layout and
        returns its address for the receivers; the other ranks return None."""
        weights = self.learner.weights()
        if self.rank != 0:
            return None
        self.sender = CollectiveSender(join_models(weights), num_receivers, bucket_mb=bucket_mb,
                                       host=ray.util.get_node_ip_address())
        return self.sender.address()

    def join_broadcast(self) -> None:
        self.sender.join()

    def publish_object_store(self) -> tuple[int, list]:
        """Publish (every rank bumps its version); rank 0 also puts the weights in the object store and returns
        [ref]: one copy into shared memory, where returning them to the driver to put there would make two."""
        version, weights = self.learner.publish()
        return version, [ray.put(weights)] if self.rank == 0 else []

    def publish_broadcast(self) -> int:
        """Publish (every rank bumps its version; rank 0 also broadcasts the weights); returns the version."""
        version, weights = self.learner.publish()
        if self.rank == 0:
            self.sender.publish(version, join_models(weights))
        return version


class LearnerGroup:
    def __init__(self, cfg: Config, policy_path: str, value_path: str, rollout_path: str | None = None):
        lc = cfg.learner
        if lc.num_ranks < 1:
            raise ValueError(f"learner.num_ranks = {lc.num_ranks}: need at least 1")
        bundle = {"CPU": lc.num_cpus, **({"GPU": lc.num_gpus} if lc.num_gpus else {})}
        self.pg = placement_group([bundle] * lc.num_ranks, strategy="PACK")
        try:
            ray.get(self.pg.ready(), timeout=READY_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(f"the cluster cannot place {lc.num_ranks} learner ranks of {bundle} "
                               f"(learner.num_ranks, learner.num_cpus, learner.num_gpus)") from None
        env = runtime_env(lc.num_cpus)
        env["env_vars"]["DS_ACCELERATOR"] = "cuda" if lc.num_gpus > 0 else "cpu"
        self.ranks = [LearnerRank.options(
            num_cpus=lc.num_cpus, num_gpus=lc.num_gpus, runtime_env=env,
            scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=r))
            .remote(r) for r in range(lc.num_ranks)]
        self.transport, self.bucket_mb, self.broadcast_open = lc.weight_transport, lc.bucket_mb, False
        master = ray.get(self.ranks[0].address.remote())
        ray.get([a.start.remote(cfg, policy_path, value_path, lc.num_ranks, master, rollout_path) for a in self.ranks])

    def submit(self, method: Callable, *args, **kwargs) -> list[ray.ObjectRef]:
        """Start method on every rank; one ref per rank (rank 0 first)."""
        return [a.run.remote(method, *args, **kwargs) for a in self.ranks]

    def call(self, method: Callable, *args, **kwargs) -> Any:
        """Run method on every rank and return rank 0's result."""
        return ray.get(self.submit(method, *args, **kwargs))[0]

    def publish(self, pool) -> int:
        """A new version to every rollout actor of pool, by learner.weight_transport; returns the version
        the actors confirm (they swap between searches: a call queues behind the search in flight)."""
        if self.transport == "collective":
            if not self.broadcast_open:
                addr = ray.get([a.open_broadcast.remote(len(pool.actors), self.bucket_mb) for a in self.ranks])[0]
                ray.get(pool.join_broadcast(addr) + [self.ranks[0].join_broadcast.remote()])
                self.broadcast_open = True
            received = pool.receive_broadcast()  # receivers first: both sides block until all are there
            versions = ray.get([a.publish_broadcast.remote() for a in self.ranks])
            confirmed, version = ray.get(received), versions[0]
        else:
            version, [ref] = ray.get([a.publish_object_store.remote() for a in self.ranks])[0]
            confirmed = pool.load_weights(version, ref)
        if any(v != version for v in confirmed):
            raise RuntimeError(f"rollout actors confirmed versions {confirmed}, expected {version}")
        return version

    def shutdown(self) -> None:
        for a in self.ranks:
            ray.kill(a)
        ray.util.remove_placement_group(self.pg)
