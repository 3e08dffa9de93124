"""A rollout actor killed mid-search (ray.kill with restart) is restarted by Ray; the chunk it held is searched
again; every problem gets exactly one record, and the replay actor counts each node record once."""
import time

import pytest

from tests.conftest import EASY

from . import conftest as fault

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # ~75 s wall here: Ray start plus an actor restart


def test_killed_rollout_actor_is_restarted_and_its_chunk_requeued(tiny_model_dir, ray_local):
    import ray

    from actors.replay import ReplayActor
    from actors.rollout import RolloutPool
    from rl.config import from_dict
    from rl.tasks import ArithmeticTask
    cfg = from_dict({"run_dir": "unused", "seed": 3,
                     "rollout": {"num_actors": 2, "num_cpus": 0.5, "chunk_size": 1, "max_restarts": 1},
                     "search": {"simulations": 2, "branching": 2, "max_depth": 3, "step_max_tokens": 6},
                     "labels": {"value_greedy": False}}, where="test")
    path = str(tiny_model_dir)
    task = ArithmeticTask(EASY)
    problems = task.generate(4, 11, "train")
    pool = RolloutPool(cfg, path, path)
    pool.load_weights(0, ray.put(ray.get(pool.actors[0].weights.remote())))
    replay = ReplayActor.remote(10000, inbox_capacity=10000)
    killed = []

    def kill_busy_actor_once(_n):  # after the first chunk: actor 1 still holds one (chunk_size 1, 2 actors)
        if not killed:
            fault.injected()
            ray.kill(pool.actors[1], no_restart=False)
            killed.append(1)

    try:
        batches = pool.search(problems, progress=kill_busy_actor_once, replay=replay)
        assert killed and pool.requeued >= 1
        ids = [r.id for b in batches for r in b.records]
        lost = len({p.id for p in problems} - set(ids))
        duplicated = len(ids) - len(set(ids))
        nodes = ray.get(replay.drain_new.remote())
        node_ids = [n.id for n in nodes]
        duplicated += len(node_ids) - len(set(node_ids))
        fault.records(lost, duplicated)
        assert lost == 0 and duplicated == 0 and sorted(ids) == sorted(p.id for p in problems)
        # the restarted actor answers again, at the published version (it may still be starting up)
        version = None
        for _ in range(120):
            try:
                version = ray.get(pool.actors[1].version.remote(), timeout=60)
                break
            except ray.exceptions.ActorUnavailableError:
                time.sleep(0.5)
        assert version == 0
        fault.survived()
    finally:
        for a in pool.actors:
            ray.kill(a, no_restart=True)
        ray.kill(replay)
