import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rl.models import ValueCritic
from rl.models.critics import (CRITICS, KINDS, GenerativeCritic, HeadCritic, MultiHeadCritic, build_critic,
                               step_end_tokens)

# texts of different lengths so right padding and a partial last chunk (batch_size 2) both occur
TEXTS = ["Q: 1+2\n", "Q: 3+4-5+6\n3+4=7\n7-5=2\n", "Q: 9\n", "Q: 2*3\n2*3=6\nAnswer: 6", "Q: 8-1\n8-1=7\n"]
PROMPT = "Q: 3+4-5+6\n"
STEPS = ["3+4=7\n", "7-5=2\n", "2+6=8\n", "Answer: 8"]


def head(path, kind="value", **kw) -> HeadCritic:
    torch.manual_seed(0)  # the new scalar head on a policy folder is random
    return HeadCritic.from_pretrained(path, kind, device="cpu", **kw)


def multi(path, **kw) -> MultiHeadCritic:
    return MultiHeadCritic.from_pretrained(path, ["value", "prm", "orm"], device="cpu", **kw)


def generative(path, **kw) -> GenerativeCritic:
    return GenerativeCritic.from_pretrained(path, device="cpu", **kw)


def test_step_end_tokens_picks_the_last_token_of_each_step():
    offsets = [(0, 2), (2, 3), (3, 6)]            # three tokens over six characters
    assert step_end_tokens(offsets, [2, 3, 5, 6]) == [0, 1, 2, 2]  # a straddled boundary goes to the earlier step
    with pytest.raises(ValueError):
        step_end_tokens(offsets, [0])


@pytest.mark.parametrize("kind", KINDS)
def test_head_critic_round_trips(tiny_model_dir, tmp_path, kind):
    critic = head(tiny_model_dir, kind)
    before = critic.score(TEXTS)
    assert before.shape == (len(TEXTS),) and ((before > 0) & (before < 1)).all()
    critic.save_pretrained(tmp_path / kind)
    again = HeadCritic.from_pretrained(tmp_path / kind, device="cpu")  # kind comes from critic.json
    assert again.kind == kind
    np.testing.assert_allclose(again.score(TEXTS), before, atol=1e-6)
    np.testing.assert_allclose(again.score_steps(PROMPT, STEPS), critic.score_steps(PROMPT, STEPS), atol=1e-6)


def test_generative_critic_round_trips_with_its_settings(tiny_model_dir, tmp_path):
    critic = generative(tiny_model_dir, template="{text}\nOK? ", true_token="+", false_token="-")
    before = critic.score(TEXTS)
    critic.save_pretrained(tmp_path / "gen")
    again = GenerativeCritic.from_pretrained(tmp_path / "gen", device="cpu")
    assert (again.template, again.true_token, again.false_token) == ("{text}\nOK? ", "+", "-")
    np.testing.assert_allclose(again.score(TEXTS), before, atol=1e-6)


def test_multihead_critic_round_trips(tiny_model_dir, tmp_path):
    critic = multi(tiny_model_dir)
    before = critic.score_heads(TEXTS)
    critic.save_pretrained(tmp_path / "multi")
    again = MultiHeadCritic.from_pretrained(tmp_path / "multi", device="cpu")  # heads come from critic.json
    assert again.names == ("value", "prm", "orm")
    after = again.score_heads(TEXTS)
    for name in critic.names:
        np.testing.assert_allclose(after[name], before[name], atol=1e-6)
    np.testing.assert_allclose(again.head("prm").score_steps(PROMPT, STEPS),
                               critic.head("prm").score_steps(PROMPT, STEPS), atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda p: head(p, "value", batch_size=2),
    lambda p: head(p, "prm", batch_size=2),
    lambda p: generative(p, batch_size=2),
    lambda p: multi(p, batch_size=2).head("orm"),
], ids=["value", "prm", "generative", "multihead"])
def test_batch_scores_equal_one_at_a_time(tiny_model_dir, make):
    critic = make(tiny_model_dir)
    batch = critic.score(TEXTS)
    single = np.concatenate([critic.score([t]) for t in TEXTS])
    np.testing.assert_allclose(batch, single, atol=1e-6)
    assert critic.score([]).shape == (0,)


@pytest.mark.parametrize("make", [lambda p: head(p, "prm"), lambda p: multi(p).head("prm")],
                         ids=["head", "multihead"])
def test_prm_step_scores_from_one_pass_equal_prefix_scores(tiny_model_dir, make):
    critic = make(tiny_model_dir)
    one_pass = critic.score_steps(PROMPT, STEPS)
    prefixes = np.concatenate([critic.score([PROMPT + "".join(STEPS[:k + 1])]) for k in range(len(STEPS))])
    assert one_pass.shape == (len(STEPS),)
    np.testing.assert_allclose(one_pass, prefixes, atol=1e-5)
    assert len(set(np.round(one_pass, 6))) == len(STEPS)  # really different positions, not one repeated read


def test_prm_trajectories_batch_like_single(tiny_model_dir):
    critic = head(tiny_model_dir, "prm", batch_size=2)
    trajs = [(PROMPT, STEPS), ("Q: 1+2\n", ["1+2=3\n", "Answer: 3"]), ("Q: 9\n", ["Answer: 9"])]
    batch = critic.score_trajectories(trajs)
    for (p, s), scores in zip(trajs, batch):
        np.testing.assert_allclose(scores, critic.score_steps(p, s), atol=1e-6)


def test_generative_probability_is_the_softmax_ratio(tiny_model_dir):
    critic = generative(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    y, n = tok.convert_tokens_to_ids("Y"), tok.convert_tokens_to_ids("N")
    expected = []
    for t in TEXTS:
        ids = tok(t + "\nIs this correct? ", return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            p = model(input_ids=ids).logits[0, -1].softmax(-1)   # [V] next-token distribution
        expected.append(float(p[y] / (p[y] + p[n])))
    np.testing.assert_allclose(critic.score(TEXTS), expected, atol=1e-6)


@pytest.mark.parametrize("tokens, named", [(dict(true_token="Yes"), "Yes"), (dict(false_token="No"), "No"),
                                           (dict(true_token="N"), "same token")])
def test_generative_rejects_tokens_that_are_not_single_and_distinct(tiny_model_dir, tokens, named):
    with pytest.raises(ValueError, match=named):
        generative(tiny_model_dir, **tokens)


def test_multihead_heads_share_one_backbone(tiny_model_dir):
    critic = multi(tiny_model_dir)
    value, prm = critic.head("value"), critic.head("prm")
    assert value.backbone is prm.backbone
    assert value.backbone.get_input_embeddings().weight is prm.backbone.get_input_embeddings().weight
    hidden = critic.model.backbone.config.hidden_size
    backbone_params = sum(p.numel() for p in critic.model.backbone.parameters())
    assert sum(p.numel() for p in critic.model.parameters()) == backbone_params + 3 * (hidden + 1)
    assert np.abs(value.score(TEXTS) - prm.score(TEXTS)).max() > 1e-4   # different heads, different scores
    together = critic.score_heads(TEXTS)                                  # one pass reads every head
    np.testing.assert_allclose(together["value"], value.score(TEXTS), atol=1e-6)
    with pytest.raises(ValueError, match="q"):
        critic.head("q")


def test_multihead_weights_load_with_version_for_every_head(tiny_model_dir):
    critic = multi(tiny_model_dir)
    w = critic.head("value").weights()
    assert "heads.prm.weight" in w and any(k.startswith("backbone.") for k in w)
    w["heads.prm.bias"] = w["heads.prm.bias"] + 1.0
    before = critic.head("prm").score(TEXTS)
    critic.head("value").load_weights(4, w)
    assert critic.head("prm").version == 4 and critic.version == 4
    assert (critic.head("prm").score(TEXTS) > before).all()


def test_value_head_interchanges_with_value_critic(tiny_model_dir, tmp_path):
    critic = head(tiny_model_dir, "value")
    critic.save_pretrained(tmp_path / "h")
    np.testing.assert_allclose(ValueCritic.from_pretrained(tmp_path / "h", device="cpu").score(TEXTS),
                               critic.score(TEXTS), atol=1e-6)
    old = ValueCritic.from_pretrained(tiny_model_dir, device="cpu")
    old.model.save_pretrained(str(tmp_path / "v"))                       # a ValueCritic folder: no tokenizer
    new = HeadCritic.from_pretrained(tmp_path / "v", tokenizer_path=tiny_model_dir, device="cpu")
    assert new.kind == "value"
    np.testing.assert_allclose(new.score(TEXTS), old.score(TEXTS), atol=1e-6)


def test_build_critic_reads_the_folder_and_shares_multihead_backbones(tiny_model_dir, tmp_path):
    assert set(CRITICS) == {"head", "generative", "multihead"}
    head(tiny_model_dir, "prm").save_pretrained(tmp_path / "prm")
    multi(tiny_model_dir).save_pretrained(tmp_path / "multi")
    generative(tiny_model_dir).save_pretrained(tmp_path / "gen")
    prm = build_critic("prm", tmp_path / "prm", device="cpu")
    assert isinstance(prm, HeadCritic) and prm.kind == "prm"
    assert isinstance(build_critic("orm", tmp_path / "gen", device="cpu"), GenerativeCritic)
    shared = {}
    v = build_critic("value", tmp_path / "multi", shared=shared, device="cpu")
    o = build_critic("orm", tmp_path / "multi", shared=shared, device="cpu")
    assert v.backbone is o.backbone and len(shared) == 1
    q = build_critic("q", tiny_model_dir, backend="multihead", heads=["value"], device="cpu")
    assert q.parent.names == ("value", "q")
    with pytest.raises(ValueError, match="reward"):
        build_critic("reward", tmp_path / "prm")
    with pytest.raises(ValueError, match="mystery"):
        build_critic("value", tmp_path / "prm", backend="mystery")
