"""Where rollout actors run: one Ray placement group per actor, so its CPUs and GPUs sit on one node.

A rollout actor holds a policy replica and a critic replica. `rollout_bundles` (plain, no Ray) turns
the rollout config into the resources one actor reserves and the torch device each replica uses
inside it; `RolloutPlacement` reserves those resources, one STRICT_PACK group per actor, and hands
out `.options()` for the actor class.

Device strings are local to the actor: Ray sets CUDA_VISIBLE_DEVICES to the GPUs it assigned, so
inside the actor they are always numbered from cuda:0.
"""
from __future__ import annotations

import math

import ray
from ray.util import placement_group, placement_group_table, remove_placement_group
from ray.util.placement_group import PlacementGroup
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy


def _check_gpus(key: str, gpus: float) -> None:
    """Ray takes fractions of one GPU or whole numbers of GPUs; anything else fails at scheduling."""
    if not (math.isfinite(gpus) and gpus >= 0):
        raise ValueError(f"{key} = {gpus}: must be a finite number >= 0")
    if gpus > 1 and gpus != int(gpus):
        raise ValueError(f"{key} = {gpus}: Ray needs a fraction of one GPU or a whole number of GPUs")


def rollout_bundles(*, num_cpus: float, policy_gpus: float, critic_gpus: float,
                    colocate: bool) -> tuple[dict[str, float], dict[str, str]]:
    """The resource bundle of ONE rollout actor and the device of each replica inside it.

    - No GPUs (policy_gpus == critic_gpus == 0): {"CPU": num_cpus}; both replicas on "cpu".
    - colocate=True: {"CPU": num_cpus, "GPU": policy_gpus}; both replicas on cuda:0. The critic
      shares the policy's GPU and reservation, so `critic_gpus` must be 0: a separate critic share
      inside the same reservation would change nothing, and a config value with no effect is a trap.
    - colocate=False: {"CPU": num_cpus, "GPU": policy_gpus + critic_gpus}; the policy on cuda:0
      (its GPUs are cuda:0..policy_gpus-1), the critic on the first GPU after them. Each replica
      then owns whole GPUs, so both counts must be whole numbers >= 1.

    Args:
        num_cpus: `rollout.num_cpus`, > 0 (a bundle of nothing cannot be reserved, and the actor
            does CPU work of its own: tokenizing, tree bookkeeping).
        policy_gpus: `rollout.num_gpus`, GPUs for the policy replica.
        critic_gpus: `rollout.critic_gpus`, GPUs for the critic replica when not colocated.
        colocate: `rollout.colocate_critics`, whether the critic shares the policy's GPU.

    Returns:
        (bundle, devices): e.g. ({"CPU": 1.0, "GPU": 2.0}, {"policy": "cuda:0", "critic": "cuda:1"}).
    """
    if not (math.isfinite(num_cpus) and num_cpus > 0):
        raise ValueError(f"rollout.num_cpus = {num_cpus}: must be > 0")
    _check_gpus("rollout.num_gpus", policy_gpus)
    _check_gpus("rollout.critic_gpus", critic_gpus)
    cpus = float(num_cpus)
    if policy_gpus == 0 and critic_gpus == 0:
        return {"CPU": cpus}, {"policy": "cpu", "critic": "cpu"}
    if colocate:
        if critic_gpus != 0:
            raise ValueError(f"rollout.critic_gpus = {critic_gpus} with rollout.colocate_critics = true: "
                             "a colocated critic shares the policy's GPU (rollout.num_gpus); set it to 0")
        return {"CPU": cpus, "GPU": float(policy_gpus)}, {"policy": "cuda:0", "critic": "cuda:0"}
    for key, gpus in (("rollout.num_gpus", policy_gpus), ("rollout.critic_gpus", critic_gpus)):
        if gpus < 1 or gpus != int(gpus):
            raise ValueError(f"{key} = {gpus} with rollout.colocate_critics = false: each replica gets "
                             "whole GPUs of its own, so give a whole number >= 1 (or colocate the critic)")
    return ({"CPU": cpus, "GPU": float(policy_gpus + critic_gpus)},
            {"policy": "cuda:0", "critic": f"cuda:{int(policy_gpus)}"})


class RolloutPlacement:
    """One STRICT_PACK placement group per rollout actor, ready and ordered by node.

    STRICT_PACK keeps an actor's CPUs and GPUs on one node. Slots are sorted by the node their bundle
    landed on, so actors i and i+1 share a node where possible (neighbours in a weight broadcast or a
    chunk queue then stay local). Use as `RolloutActor.options(**placement.options(i)).remote(...)`;
    call `remove()` to free the reservations.
    """

    def __init__(self, num_actors: int, *, num_cpus: float, policy_gpus: float = 0.0,
                 critic_gpus: float = 0.0, colocate: bool = True, timeout_s: float = 60.0):
        if num_actors < 1:
            raise ValueError(f"rollout.num_actors = {num_actors}: must be >= 1")
        self.bundle, self.devices = rollout_bundles(num_cpus=num_cpus, policy_gpus=policy_gpus,
                                                    critic_gpus=critic_gpus, colocate=colocate)
        groups = [placement_group([self.bundle], strategy="STRICT_PACK") for _ in range(num_actors)]
        ready, _ = ray.wait([g.ready() for g in groups], num_returns=len(groups), timeout=timeout_s)
        if len(ready) < len(groups):
            message = self._shortage(len(groups) - len(ready), len(groups), timeout_s)
            for g in groups:  # give back the groups that did fit, so nothing is held by a failed start
                remove_placement_group(g)
            raise TimeoutError(message)
        nodes = [placement_group_table(g)["bundles_to_node_id"][0] for g in groups]
        order = sorted(range(len(groups)), key=lambda i: nodes[i])  # stable: creation order within a node
        self._groups: list[PlacementGroup] = [groups[i] for i in order]
        self._nodes: list[str] = [nodes[i] for i in order]

    def _shortage(self, missing: int, wanted: int, timeout_s: float) -> str:
        """Say which resources could not be found: short in total, or only not on any one node."""
        total, free = ray.cluster_resources(), ray.available_resources()
        short = [f"{k} (need {v * wanted:g} in all, cluster has {total.get(k, 0.0):g})"
                 for k, v in self.bundle.items() if v * wanted > total.get(k, 0.0)]
        why = ("not enough " + ", ".join(short) if short else
               "the cluster has enough in total, but no node has a free bundle (used by others or split "
               f"across nodes; free now: {({k: free.get(k, 0.0) for k in self.bundle})})")
        return (f"could not place {missing} of {wanted} rollout actors within {timeout_s:g}s: each needs "
                f"{self.bundle} on one node; {why}. Lower rollout.num_actors, rollout.num_cpus, "
                "rollout.num_gpus or rollout.critic_gpus, set rollout.colocate_critics, or add nodes.")

    def __len__(self) -> int:
        return len(self._groups)

    def group(self, i: int) -> PlacementGroup:
        """The placement group of actor slot i."""
        return self._groups[i]

    def node_of(self, i: int) -> str:
        """Hex id of the node that actor slot i's bundle is on."""
        return self._nodes[i]

    def options(self, i: int) -> dict:
        """Keyword arguments for `ActorClass.options(...)` that run actor i inside its group."""
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(self._groups[i],
                                                                        placement_group_bundle_index=0),
                "num_cpus": self.bundle["CPU"], "num_gpus": self.bundle.get("GPU", 0.0)}

    def remove(self) -> None:
        """Free every group (actors still inside them are killed by Ray). Safe to call twice."""
        for g in self._groups:
            remove_placement_group(g)
        self._groups, self._nodes = [], []

