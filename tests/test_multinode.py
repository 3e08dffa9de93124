"""A two-node Ray cluster on this machine (loopback only): rollout actors on both nodes, the learner on
one, weights pushed over the collective broadcast group, experiences streamed to the replay actor."""
import pytest

from tests.test_integration import ROOT, TINY

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_two_node_job_pushes_weights_to_both_nodes_and_collects_their_experience(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from launch.controller import Controller
    from rl.config import load_config

    if ray.is_initialized():
        ray.shutdown()
    # 2 CPUs per node and 1.5 per rollout actor: each node can hold only one actor, so they must spread
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    try:
        cfg = load_config(ROOT / "configs" / "arithmetic.yaml", [
            f"run_dir={tmp_path / 'run'}", "loop.rounds=1", *TINY, "rollout.num_cpus=1.5", "learner.num_cpus=0.4",
            "learner.weight_transport=collective", "wandb.mode=disabled", "loop.log_trees=0"])
        ctl = Controller(cfg, resume="none", address=cluster.address, console=False)
        rows = ctl.run()
        assert [r["round"] for r in rows] == [0, 1] and ctl.version == 2
        actors = ctl.pool.actors
        nodes = ray.get([a.node_id.remote() for a in actors])
        assert len(set(nodes)) == 2 == len({n["NodeID"] for n in ray.nodes() if n["Alive"]})
        # the new version reached the actors on both nodes, through the broadcast group
        assert ray.get([a.version.remote() for a in actors]) == [2, 2]
        # both actors' experiences reached the replay actor, and from there the learner's round
        sent = ray.get([a.sent.remote() for a in actors])
        assert all(n > 0 for n in sent)
        assert ray.get(ctl.replay.size.remote()) == sum(sent)
    finally:
        ray.shutdown()
        cluster.shutdown()
