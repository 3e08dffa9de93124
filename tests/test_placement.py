"""Rollout placement: bundle arithmetic without Ray, then real placement groups on fake GPUs."""
import os
import time

import pytest

from actors.placement import RolloutPlacement, rollout_bundles

# --- rollout_bundles: plain function ------------------------------------------------------------


def test_bundles_cpu_only():
    assert rollout_bundles(num_cpus=0.5, policy_gpus=0, critic_gpus=0, colocate=True) == (
        {"CPU": 0.5}, {"policy": "cpu", "critic": "cpu"})
    assert rollout_bundles(num_cpus=2, policy_gpus=0, critic_gpus=0, colocate=False) == (
        {"CPU": 2.0}, {"policy": "cpu", "critic": "cpu"})


def test_bundles_colocated_share_the_policy_gpu():
    assert rollout_bundles(num_cpus=1, policy_gpus=0.5, critic_gpus=0, colocate=True) == (
        {"CPU": 1.0, "GPU": 0.5}, {"policy": "cuda:0", "critic": "cuda:0"})
    assert rollout_bundles(num_cpus=1, policy_gpus=2, critic_gpus=0, colocate=True)[0] == {"CPU": 1.0, "GPU": 2.0}


def test_bundles_separate_gpus():
    assert rollout_bundles(num_cpus=1, policy_gpus=1, critic_gpus=1, colocate=False) == (
        {"CPU": 1.0, "GPU": 2.0}, {"policy": "cuda:0", "critic": "cuda:1"})
    # a 2-GPU policy holds cuda:0 and cuda:1, so the critic comes after them
    assert rollout_bundles(num_cpus=1, policy_gpus=2, critic_gpus=1, colocate=False) == (
        {"CPU": 1.0, "GPU": 3.0}, {"policy": "cuda:0", "critic": "cuda:2"})


@pytest.mark.parametrize("kwargs, key", [
    (dict(num_cpus=0, policy_gpus=0, critic_gpus=0, colocate=True), "rollout.num_cpus"),
    (dict(num_cpus=-1, policy_gpus=1, critic_gpus=0, colocate=True), "rollout.num_cpus"),
    (dict(num_cpus=1, policy_gpus=-1, critic_gpus=0, colocate=True), "rollout.num_gpus"),
    (dict(num_cpus=1, policy_gpus=1.5, critic_gpus=0, colocate=True), "rollout.num_gpus"),
    (dict(num_cpus=1, policy_gpus=1, critic_gpus=float("nan"), colocate=True), "rollout.critic_gpus"),
    (dict(num_cpus=1, policy_gpus=1, critic_gpus=0.5, colocate=True), "rollout.colocate_critics"),
    (dict(num_cpus=1, policy_gpus=0.5, critic_gpus=1, colocate=False), "rollout.num_gpus"),
    (dict(num_cpus=1, policy_gpus=1, critic_gpus=0.5, colocate=False), "rollout.critic_gpus"),
    (dict(num_cpus=1, policy_gpus=1, critic_gpus=0, colocate=False), "rollout.critic_gpus"),
    (dict(num_cpus=1, policy_gpus=0, critic_gpus=1, colocate=False), "rollout.num_gpus"),
])
def test_bundles_errors_name_the_config_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        rollout_bundles(**kwargs)


# --- RolloutPlacement on a local Ray with 4 fake GPUs ----------------------------------------------

CPUS = 0.1  # per actor: fractional so that every test fits on the 2 real cores


@pytest.fixture(scope="module")
def ray_gpus():
    import ray
    if ray.is_initialized():  # a session started elsewhere has other resources; this needs 4 GPUs
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _probe_cls(ray):
    @ray.remote
    class Probe:
        """Reports what Ray gave it: GPU ids, assigned resources, its placement group, its node."""

        def report(self) -> dict:
            pg = ray.util.get_current_placement_group()
            ctx = ray.get_runtime_context()
            return {"gpus": [str(g) for g in ray.get_gpu_ids()], "resources": ctx.get_assigned_resources(),
                    "pg": None if pg is None else pg.id.hex(), "node": ctx.get_node_id(),
                    "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES")}
    return Probe


def _start(ray, placement: RolloutPlacement) -> tuple[list, list[dict]]:
    Probe = _probe_cls(ray)
    actors = [Probe.options(**placement.options(i)).remote() for i in range(len(placement))]
    return actors, ray.get([a.report.remote() for a in actors], timeout=60)


def _free_again(ray, resources: dict[str, float], timeout_s: float = 10.0) -> bool:
    """Removal is asynchronous: poll until `resources` are available again."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        free = ray.available_resources()
        if all(free.get(k, 0.0) >= v - 1e-9 for k, v in resources.items()):
            return True
        time.sleep(0.1)
    return False


def _stop(ray, actors, placement: RolloutPlacement) -> None:
    for a in actors:
        ray.kill(a)
    placement.remove()
    placement.remove()  # idempotent
    assert _free_again(ray, {"GPU": 4.0, "CPU": 2.0})


@pytest.mark.ray
def test_separate_policy_and_critic_gpus(ray_gpus):
    ray = ray_gpus
    placement = RolloutPlacement(2, num_cpus=CPUS, policy_gpus=1, critic_gpus=1, colocate=False, timeout_s=30)
    assert placement.devices == {"policy": "cuda:0", "critic": "cuda:1"}
    actors, reports = _start(ray, placement)
    for i, rep in enumerate(reports):
        assert len(set(rep["gpus"])) == 2, rep  # one for the policy, one for the critic
        assert rep["resources"]["GPU"] == pytest.approx(2.0)
        assert rep["resources"]["CPU"] == pytest.approx(CPUS)
        assert rep["pg"] == placement.group(i).id.hex()  # runs inside the group made for slot i
        assert rep["node"] == placement.node_of(i)
        assert sorted(rep["cuda_visible"].split(",")) == sorted(rep["gpus"])  # so cuda:0/1 are its own
    used = [g for rep in reports for g in rep["gpus"]]
    assert sorted(used) == ["0", "1", "2", "3"]  # all four, each exactly once
    assert [placement.node_of(i) for i in range(2)] == sorted(placement.node_of(i) for i in range(2))
    _stop(ray, actors, placement)


@pytest.mark.ray
def test_colocated_actors_get_distinct_gpus(ray_gpus):
    ray = ray_gpus
    placement = RolloutPlacement(4, num_cpus=CPUS, policy_gpus=1, colocate=True, timeout_s=30)
    assert placement.devices == {"policy": "cuda:0", "critic": "cuda:0"}
    actors, reports = _start(ray, placement)
    assert sorted(g for rep in reports for g in rep["gpus"]) == ["0", "1", "2", "3"]
    assert all(len(rep["gpus"]) == 1 for rep in reports)
    assert [rep["pg"] for rep in reports] == [placement.group(i).id.hex() for i in range(4)]
    _stop(ray, actors, placement)


@pytest.mark.ray
def test_cpu_only_fractional(ray_gpus):
    ray = ray_gpus
    placement = RolloutPlacement(3, num_cpus=0.25, timeout_s=30)
    assert placement.bundle == {"CPU": 0.25} and placement.devices == {"policy": "cpu", "critic": "cpu"}
    assert placement.options(0)["num_gpus"] == 0.0 and placement.options(0)["num_cpus"] == 0.25
    actors, reports = _start(ray, placement)
    for i, rep in enumerate(reports):
        assert rep["gpus"] == [] and "GPU" not in rep["resources"]
        assert rep["resources"]["CPU"] == pytest.approx(0.25)
        assert rep["pg"] == placement.group(i).id.hex()
    _stop(ray, actors, placement)


@pytest.mark.ray
def test_too_many_gpus_fails_fast_and_frees_what_it_took(ray_gpus):
    ray = ray_gpus
    start = time.monotonic()
    # 3 actors x (1 policy + 1 critic) GPUs = 6 > 4: two groups fit, the third never does
    shortage = r"could not place 1 of 3 .*not enough GPU \(need 6 in all, cluster has 4\)"
    with pytest.raises(TimeoutError, match=shortage):
        RolloutPlacement(3, num_cpus=CPUS, policy_gpus=1, critic_gpus=1, colocate=False, timeout_s=3)
    assert time.monotonic() - start < 10
    assert _free_again(ray, {"GPU": 4.0, "CPU": 2.0})  # the two groups that fit were removed
