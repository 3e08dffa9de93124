"""The DeepSpeed learner (one rank, gloo on CPU): training lowers the loss, publishing bumps the version."""
import numpy as np
import pytest
import torch

from rl.config import LearnerConfig
from rl.tasks import ArithmeticTask
from tests.conftest import EASY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def learner(tiny_model_dir):
    from learners.learner import Learner
    return Learner(LearnerConfig(zero_stage=2, batch_size=8, policy_lr=3e-3, value_lr=3e-3, critics=["q"],
                                 critic_lr=3e-3, critic_model="head"),
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


def test_fqi_lowers_the_bellman_error_and_q_learns_the_tree(learner):
    from rl.labels import QTransitions
    # s -> a1 (terminal, r=1) | a2 -> a2b (terminal, r=0): optimal Q(a1)=1, Q(a2)=Q(a2b)=0
    data = QTransitions(texts=["Q: 1+1\n2\n", "Q: 1+1\n3\n", "Q: 1+1\n3\n4\n"] * 3,
                        rewards=np.array([1.0, 0.0, 0.0] * 3), done=np.array([True, False, True] * 3),
                        next_candidates=[np.array([], dtype=int), np.array([2]), np.array([], dtype=int)] * 3,
                        problem_ids=["p"] * 9)
    m = learner.train_q_fqi(data, iterations=3, gamma=1.0, epochs=10)
    assert m["learner/q_bellman_error_final"] < m["learner/q_bellman_error_iter0"]
    q = learner.critic_scores("q", data.texts[:3])
    assert q[0] > 0.7 and q[1] < 0.3 and q[2] < 0.3
    v_before = learner.critic_scores("value", data.texts[:1])
    learner.train_critic("q", data.texts[:1], np.array([0.0]), epochs=1)
    np.testing.assert_array_equal(learner.critic_scores("value", data.texts[:1]), v_before)  # critics are apart


def test_step_level_dpo_raises_the_chosen_step_over_the_rejected(learner):
    from rl.experience import NodeExperience
    from rl.losses import sequence_logprobs, sft_batch

    def node(i, step, value):
        return NodeExperience(id=f"p/v0/{i}", problem_id="p", node=i, parent=0, depth=1, state="Q: 2+2\n" + step,
                              step=step, visits=3, value=value, value_target=value, terminal_reward=float("nan"),
                              policy_version=0, critic_version=0)
    nodes = [node(1, "4\n", 0.9), node(2, "5\n", 0.1)]

    def margin():
        b = sft_batch(learner.tokenizer, ["Q: 2+2\n"] * 2, ["4\n", "5\n"], 64, eos=False)
        with torch.no_grad():
            lp = sequence_logprobs(learner.policy(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                                   b["labels"])
        return float(lp[0] - lp[1])

    before = margin()
    m = learner.train_policy_dpo(nodes, min_gap=0.5, beta=0.5, epochs=20)
    assert m["learner/dpo_pairs"] == 1 and m["learner/dpo_loss"] < m["learner/dpo_loss_first"]
    assert margin() > before + 0.5


def test_temperature_folded_into_the_head_scales_every_logit(learner):
    texts = ["Q: 1+1\n2\n", "Q: 3-1\n5\n", "Q: 2+2\n4\n"]
    before = learner.critic_logits("q", texts)
    learner.scale_head("q", 0.5)
    np.testing.assert_allclose(learner.critic_logits("q", texts), 0.5 * before, rtol=1e-5, atol=1e-6)
    learner.scale_head("q", 2.0)


def test_unknown_critic_is_named(learner):
    with pytest.raises(ValueError, match="learner.critics"):
        learner.critic_scores("prm", ["x"])


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
    assert (tmp_path / "ck" / "q" / "model.safetensors").is_file() and set(w1) == {"policy", "value", "q"}
    learner.version = 0
    assert learner.load(tmp_path / "ck") == v2


def test_zero2_weights_are_views_of_one_flat_buffer(learner):
    """What lets the collective transport send the learner's buckets without packing (rl/transport.py)."""
    from rl.transport import contiguous_view, plan_buckets, weights_spec
    for model, w in learner.weights().items():  # (the tied head is published once, as the embedding)
        [bucket] = plan_buckets(weights_spec(w), 2**30)
        assert contiguous_view(w, bucket) is not None, model


@pytest.mark.ray
def test_weight_push_from_learner_to_actor_with_version_check(learner, tiny_model_dir, ray_local):
    from actors.rollout import RolloutActor
    task = ArithmeticTask(EASY)
    from rl.config import SearchConfig
    actor = RolloutActor.options(num_cpus=0.5).remote(task, SearchConfig(simulations=2, branching=2),
                                                      str(tiny_model_dir), str(tiny_model_dir),
                                                      critic_model="head")
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


@pytest.mark.ray
def test_two_ranks_follow_the_one_rank_loss_curve(tiny_model_dir, ray_local):
    """Same global batch, same seed: 2 data-parallel ranks (and 1 rank with 2 accumulation steps) give
    the loss curve of 1 rank. Critic BCE is a mean over examples, so it matches closely; SFT is a mean
    over tokens per micro-batch, so halves with different token counts weigh a little differently."""
    from learners.group import LearnerGroup
    from learners.learner import Learner
    from rl.config import from_dict
    task = ArithmeticTask(EASY)
    probs = task.generate(16, 5, "train")
    prompts, sols = [task.prompt(p) for p in probs], [p.solution for p in probs]
    states = [pr + s for pr, s in zip(prompts, sols)]
    targets = np.array([i % 2 for i in range(16)], dtype=np.float32)

    def curves(**learner):
        cfg = from_dict({"run_dir": "unused", "learner": {"batch_size": 8, "num_cpus": 0.5, "policy_lr": 3e-3,
                                                           "value_lr": 3e-3, "critic_model": "head",
                                                           **learner}}, where="test")
        group = LearnerGroup(cfg, str(tiny_model_dir), str(tiny_model_dir))
        try:
            pol = [group.call(Learner.train_policy, prompts, sols, steps=1)["learner/policy_loss_first"]
                   for _ in range(4)]
            val = [group.call(Learner.train_critic, "value", states, targets, epochs=1)["learner/value_loss_first"]
                   for _ in range(3)]
            return np.array(pol), np.array(val)
        finally:
            group.shutdown()

    pol1, val1 = curves(num_ranks=1)
    pol2, val2 = curves(num_ranks=2)
    pol_acc, val_acc = curves(num_ranks=1, grad_accum=2)
    assert pol1[-1] < pol1[0]  # it trains
    np.testing.assert_allclose(val2, val1, rtol=1e-5)
    np.testing.assert_allclose(val_acc, val1, rtol=1e-5)
    np.testing.assert_allclose(pol2, pol1, rtol=2e-3)
    np.testing.assert_allclose(pol_acc, pol1, rtol=2e-3)


def test_zero3_with_optimizer_offload_trains_and_publishes_whole_weights(tiny_model_dir):
    """ZeRO-3 partitions parameters: publishing gathers them, so actors get full shapes."""
    from learners.learner import Learner
    from rl.models.weights import tied_names
    from transformers import AutoModelForCausalLM
    ref = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    lz = Learner(LearnerConfig(zero_stage=3, batch_size=4, offload_optimizer=True, value_lr=3e-3),
                 str(tiny_model_dir), str(tiny_model_dir))
    assert lz.is_generative("value")  # the default critic: a generative verifier, trained by SFT
    lz.add_verified(["Q: 1\n1\n", "Q: 2\n2\n"])
    m = lz.train_verifier("value", steps=5)
    assert m["learner/value_loss"] < m["learner/value_loss_first"]
    _, weights = lz.publish()
    tied = tied_names(ref.state_dict())
    assert tied  # the embedded default ties its head: published once, under the embedding's name
    for k, v in ref.state_dict().items():
        assert weights["policy"][tied.get(k, k)].shape == tuple(v.shape)


def test_sft_batch_keeps_the_completion_of_a_long_pair_and_an_unlabelled_batch_has_zero_loss():
    import torch

    from rl.losses import IGNORE, sft_batch, sft_loss
    from rl.models.tokenizer import build_char_tokenizer
    tok = build_char_tokenizer()
    b = sft_batch(tok, ["Q: " + "x" * 30 + "\n", "Q: 1\n"], ["A: 7\n", "A: 2\n"], 12)
    ids, labels = b["input_ids"], b["labels"]
    assert ids.shape[1] == 12
    assert tok.decode(ids[0]) == "x" * 5 + "\nA: 7\n" + tok.eos_token        # 6 prompt tokens: it lost its start
    assert tok.decode([t for t in labels[0].tolist() if t != IGNORE]) == "A: 7\n" + tok.eos_token
    assert tok.decode([t for t in labels[1].tolist() if t != IGNORE]) == "A: 2\n" + tok.eos_token
    logits = torch.randn(2, 12, 5, requires_grad=True)
    loss = sft_loss(logits, torch.full((2, 12), IGNORE))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


@pytest.mark.ray
def test_zero3_two_ranks_publish_whole_weights_over_both_transports(tiny_model_dir, ray_local):
    """ZeRO-3 over 2 ranks with every parameter partitioned (persistence threshold 0): gathering the weights
    is a collective, so every rank must take part when the broadcast group opens and on each publish.
    What the actors receive, by the broadcast group and by the object store, equals bit for bit what the
    learner holds."""
    from actors.rollout import RolloutPool
    from learners.group import LearnerGroup
    from learners.learner import Learner
    from rl.config import from_dict
    task = ArithmeticTask(EASY)
    probs = task.generate(8, 5, "train")
    cfg = from_dict({"run_dir": "unused", "learner": {
        "zero_stage": 3, "zero3_persistence_threshold": 0, "num_ranks": 2, "batch_size": 4, "num_cpus": 0.5,
        "critic_model": "head", "weight_transport": "collective"},
        "rollout": {"num_actors": 1, "num_cpus": 0.5}, "search": {"simulations": 2, "branching": 2}}, where="test")
    group = LearnerGroup(cfg, str(tiny_model_dir), str(tiny_model_dir))
    pool = RolloutPool(cfg, str(tiny_model_dir), str(tiny_model_dir))
    try:
        sizes = group.call(Learner.partitioned_sizes)
        assert sizes and all(local < whole for local, whole in sizes)  # ZeRO-3 really partitions them
        versions = []
        # the broadcast group opens, publishes twice; then the object store publishes from the same ranks
        for transport in ("collective", "collective", "object_store"):
            group.transport = transport
            group.call(Learner.train_policy, [task.prompt(p) for p in probs], [p.solution for p in probs], steps=1)
            versions.append(group.publish(pool))
            held = ray_local.get(pool.actors[0].weights.remote())
            learner_weights = group.call(Learner.weights)
            for model in ("policy", "value"):
                assert learner_weights[model].keys() == held[model].keys()
                for k, v in learner_weights[model].items():
                    np.testing.assert_array_equal(held[model][k], v, err_msg=f"{transport} {model}.{k}")
        assert versions == [versions[0], versions[0] + 1, versions[0] + 2]
    finally:
        group.shutdown()
        for a in pool.actors:
            ray_local.kill(a)
