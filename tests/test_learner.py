"""The DeepSpeed learner (one rank, gloo on CPU): training lowers the loss, publishing bumps the version."""
import numpy as np
import pytest

from rl.config import LearnerConfig
from rl.tasks import ArithmeticTask
from tests.conftest import EASY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def learner(tiny_model_dir):
    from learners.learner import Learner
    return Learner(LearnerConfig(zero_stage=2, batch_size=8, policy_lr=3e-3, value_lr=3e-3),
                   str(tiny_model_dir), str(tiny_model_dir), seed=0)


def test_policy_sft_steps_lower_the_loss(learner):
    task = ArithmeticTask(EASY)
    probs = task.generate(8, 0, "train")
    prompts, sols = [task.prompt(p) for p in probs], [p.solution for p in probs]
    first = learner.train_policy(prompts, sols, steps=1)
    later = learner.train_policy(prompts, sols, steps=10)
    assert later["learner/policy_loss"] < first["learner/policy_loss_first"]


def test_value_steps_fit_targets(learner):
    states = ["Q: 1+1\n2\n", "Q: 1+1\n3\n"] * 4
    targets = np.array([1.0, 0.0] * 4, dtype=np.float32)
    before = learner.value_scores(states[:2])
    m = learner.train_value(states, targets, epochs=15)
    after = learner.value_scores(states[:2])
    assert m["learner/value_loss"] < m["learner/value_loss_first"]
    assert after[0] - after[1] > before[0] - before[1] + 0.1   # the right state now scores higher


def test_publish_bumps_version_and_weights_match_the_engine(learner, tmp_path):
    v0 = learner.version
    v1, w1 = learner.publish()
    v2, _ = learner.publish()
    assert (v1, v2) == (v0 + 1, v0 + 2)
    sd = learner.policy.module.state_dict()
    for k, v in w1["policy"].items():
        np.testing.assert_array_equal(v, sd[k].numpy())
    learner.save(tmp_path / "ck")
    assert (tmp_path / "ck" / "policy" / "model.safetensors").is_file()
    assert (tmp_path / "ck" / "value" / "model.safetensors").is_file()
    learner.version = 0
    assert learner.load(tmp_path / "ck") == v2


@pytest.mark.ray
def test_weight_push_from_learner_to_actor_with_version_check(learner, tiny_model_dir, ray_local):
    from actors.rollout import RolloutActor
    task = ArithmeticTask(EASY)
    from rl.config import SearchConfig
    actor = RolloutActor.options(num_cpus=0.5).remote(task, SearchConfig(simulations=2, branching=2),
                                                      str(tiny_model_dir), str(tiny_model_dir))
    probs = task.generate(4, 3, "train")
    learner.train_policy([task.prompt(p) for p in probs], [p.solution for p in probs], steps=3)
    version, weights = learner.publish()
    assert ray_local.get(actor.load_weights.remote(version, ray_local.put(weights))) == version
    held = ray_local.get(actor.weights.remote())
    for model in ("policy", "value"):
        for k, v in weights[model].items():
            np.testing.assert_array_equal(held[model][k], v)
    batch = ray_local.get(actor.search.remote(probs[:1]))
    assert {n.policy_version for n in batch.nodes} == {version}
