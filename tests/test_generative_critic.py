"""The generative verifier (rl/models/critic.py GenerativeCritic, Learner.train_verifier): what it reads,
how it trains, and that the searches score a state as the learner does."""
import numpy as np
import pytest
import torch

from learners.critic_round import verified_solutions
from rl.config import LearnerConfig
from rl.experience import CriticExample, NodeExperience
from rl.labels import is_heldout
from rl.losses import IGNORE
from rl.models.critic import GenerativeCritic, ValueCritic, load_critic, min_token_logprob, split_state


def test_the_prompt_is_the_first_line_of_a_state():
    assert split_state("Q: 1+2+3\n1+2=3\n3+3=6\n") == ("Q: 1+2+3\n", "1+2=3\n3+3=6\n")
    assert split_state("Q: no newline") == ("Q: no newline", "")


def test_min_token_logprob_reads_only_labelled_tokens():
    # vocabulary of 2; row 0 labels positions 1 and 2, row 1 labels nothing
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8], [0.5, 0.5]],
                                     [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]]))
    labels = torch.tensor([[IGNORE, 1, 1, IGNORE], [IGNORE, IGNORE, IGNORE, IGNORE]])
    # row 0: p(label 1) at position 1 comes from logits[0], 0.5; at position 2 from logits[1], 0.1
    np.testing.assert_allclose(min_token_logprob(logits, labels).numpy(), [np.log(0.1), 0.0], rtol=1e-5)


def test_a_longer_state_never_scores_above_its_prefix_and_batching_does_not_change_scores(tiny_model_dir):
    critic = load_critic(tiny_model_dir, "generative", device="cpu")
    assert isinstance(critic, GenerativeCritic)
    states = ["Q: 1+2\n", "Q: 1+2\n1+2=", "Q: 1+2\n1+2=3\n", "Q: 4-1\n4-1=9\n"]
    together = critic.score(states)
    alone = np.array([critic.score([s])[0] for s in states])
    np.testing.assert_allclose(together, alone, rtol=1e-5)
    assert together[0] == 1.0                     # nothing after the prompt: nothing wrong yet
    assert together[0] >= together[1] >= together[2] > 0.0
    # a saved head critic reads as a head critic, a causal LM folder as generative
    assert isinstance(load_critic(tiny_model_dir, "head", device="cpu"), ValueCritic)
    assert load_critic(tiny_model_dir, device="cpu").kind == "generative"


def _node(pid: str, i: int, state: str, reward: float) -> NodeExperience:
    return NodeExperience(id=f"{pid}/v0/{i}", problem_id=pid, node=i, parent=0, depth=1, state=state, step=state,
                          visits=1, value=reward, value_target=reward, terminal_reward=reward, policy_version=0,
                          critic_version=0)


def test_verified_solutions_keep_right_terminals_and_greedy_of_training_problems_only():
    train = next(f"t{i}" for i in range(100) if not is_heldout(f"t{i}", 0.5))
    held = next(f"h{i}" for i in range(100) if is_heldout(f"h{i}", 0.5))
    nodes = [_node(train, 1, "Q: a\nright\n", 1.0), _node(train, 2, "Q: a\nwrong\n", 0.0),
             _node(train, 3, "Q: a\npartial", float("nan")), _node(held, 1, "Q: b\nright\n", 1.0)]
    greedy = [CriticExample(id="g1", problem_id=train, kind="value", text="Q: a\ngreedy\n", target=1.0, policy_version=0),
              CriticExample(id="g2", problem_id=train, kind="value", text="Q: a\nbad\n", target=0.0, policy_version=0),
              CriticExample(id="g3", problem_id=held, kind="value", text="Q: b\ngreedy\n", target=1.0, policy_version=0)]
    assert verified_solutions(nodes, greedy, 0.5) == ["Q: a\nright\n", "Q: a\ngreedy\n"]


@pytest.mark.slow
def test_trained_verifier_ranks_right_above_wrong_and_a_worker_scores_as_the_learner(tiny_model_dir, tmp_path):
    from learners.learner import Learner
    from rl.rollout import RolloutWorker
    from rl.config import SearchConfig
    from rl.tasks import ArithmeticTask
    from tests.conftest import EASY
    learner = Learner(LearnerConfig(zero_stage=2, batch_size=8, value_lr=3e-3, critics=["orm", "q"],
                                    verifier_steps=40), str(tiny_model_dir), str(tiny_model_dir), seed=0)
    assert learner.is_generative("value") and learner.is_generative("orm") and not learner.is_generative("q")
    right = ["Q: 1+1\n1+1=2\n", "Q: 2+3\n2+3=5\n", "Q: 4-1\n4-1=3\n", "Q: 6+2\n6+2=8\n"]
    wrong = ["Q: 1+1\n1+1=3\n", "Q: 2+3\n2+3=6\n", "Q: 4-1\n4-1=5\n", "Q: 6+2\n6+2=7\n"]
    assert learner.add_verified(right + right[:1]) == 4    # distinct solutions
    before = learner.critic_scores("value", right + wrong)
    m = learner.train_verifier("value")
    after = learner.critic_scores("value", right + wrong)
    assert m["learner/value_steps"] == 40 and m["learner/value_loss"] < m["learner/value_loss_first"]
    assert (after[:4] > after[4:]).all() and not (before[:4] > before[4:]).all()
    with pytest.raises(ValueError, match="generative"):
        learner.scale_head("value", 0.5)
    with pytest.raises(ValueError, match="generative"):
        learner.train_critic("value", right, np.ones(4))
    # the rollout side: the same weights score the same texts as the learner does
    task = ArithmeticTask(EASY)
    worker = RolloutWorker(task, SearchConfig(simulations=2, branching=2), str(tiny_model_dir), str(tiny_model_dir),
                           critics=("orm", "q"), device="cpu")
    version, weights = learner.publish()
    assert worker.load_weights(version, weights) == version
    np.testing.assert_allclose(worker.critics["value"].score(right + wrong), after, rtol=1e-4)
    assert worker.critics["q"].kind == "head"
    # checkpoint: the generative critic folder reloads as one, and the verified set comes back
    learner.save(tmp_path / "ck")
    assert load_critic(tmp_path / "ck" / "value", device="cpu").kind == "generative"
    assert load_critic(tmp_path / "ck" / "q", device="cpu").kind == "head"
    learner.verified = {}
    learner.load(tmp_path / "ck")
    assert list(learner.verified) == right
