import subprocess
import sys

import numpy as np
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from rl.models import Policy, ValueCritic
from rl.models.weights import load_numpy, tied_names, to_numpy


def test_rl_never_imports_ray_or_deepspeed():
    code = ("import sys; sys.modules['ray'] = None; sys.modules['deepspeed'] = None\n"
            "import rl.rollout, rl.search, rl.labels, rl.losses, rl.experience, rl.config, rl.models.embedded")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tokenizer_round_trips_through_autotokenizer(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    text = "Q: (3+5)*2-7\n8*2-7\n16-7\n9\nAnswer: 9\n  spaces  and Words!"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)                        # one token per character
    assert tok.decode(ids) == text                      # spaces and newlines survive
    assert tok.convert_tokens_to_ids("\n") != tok.unk_token_id


def test_policy_greedy_matches_plain_transformers(tiny_model_dir):
    pol = Policy.from_pretrained(tiny_model_dir)
    prompts = ["Q: 1+2\n", "Q: 3+4-5+6\n"]
    outs = pol.complete(prompts, max_new_tokens=12)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    for p, o in zip(prompts, outs):
        ids = tok(p, return_tensors="pt", add_special_tokens=False)["input_ids"]
        ref = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
        ref = [t for t in ref if t != tok.eos_token_id]
        assert o.text == tok.decode(ref)


def test_sampled_steps_end_at_newline_and_are_seeded(tiny_model_dir):
    pol = Policy.from_pretrained(tiny_model_dir)
    a = pol.sample_steps(["Q: 1+2\n", "Q: 5-3\n"], 3, temperature=1.0, max_new_tokens=6, seed=11)
    b = pol.sample_steps(["Q: 1+2\n", "Q: 5-3\n"], 3, temperature=1.0, max_new_tokens=6, seed=11)
    assert [[s.text for s in r] for r in a] == [[s.text for s in r] for r in b]
    for row in a:
        assert len(row) == 3
        for s in row:
            assert s.num_tokens <= 6 and s.logprob <= 0
            assert s.finished == (s.text.endswith("\n") or s.num_tokens < 6 and "\n" not in s.text)
            assert "\n" not in s.text[:-1]             # at most one newline, at the end


def test_value_critic_scores_batch_like_single_and_round_trips(tiny_model_dir, tmp_path):
    critic = ValueCritic.from_pretrained(tiny_model_dir)
    states = ["Q: 1+2\n", "Q: 3+4-5+6\n3\n", "Q: 9\n"]
    batch = critic.score(states)
    single = np.concatenate([critic.score([s]) for s in states])
    np.testing.assert_allclose(batch, single, atol=1e-5)   # right padding does not move the score
    assert ((batch > 0) & (batch < 1)).all()
    critic.model.save_pretrained(str(tmp_path / "v"))
    again = ValueCritic.from_pretrained(tmp_path / "v", tokenizer_path=tiny_model_dir)
    np.testing.assert_allclose(again.score(states), batch, atol=1e-6)


def test_weights_load_with_version(tiny_model_dir):
    a = Policy.from_pretrained(tiny_model_dir)
    b = Policy.from_pretrained(tiny_model_dir)
    w = a.weights()
    w = {k: v + 0.01 for k, v in w.items()}
    b.load_weights(5, w)
    assert b.version == 5
    tied = tied_names(b.model.state_dict())
    for k, v in b.model.state_dict().items():
        np.testing.assert_allclose(v.numpy(), w[tied.get(k, k)], atol=1e-7)


def test_a_tied_head_is_published_once_and_loaded_through_the_tie(tiny_model_dir):
    a = Policy.from_pretrained(tiny_model_dir)
    assert tied_names(a.model.state_dict()) == {"lm_head.weight": "model.embed_tokens.weight"}  # the embedded default ties
    w = a.weights()
    assert "lm_head.weight" not in w and "model.embed_tokens.weight" in w
    b = Policy.from_pretrained(tiny_model_dir)
    b.load_weights(1, {k: v * 2 for k, v in w.items()})
    np.testing.assert_allclose(b.model.lm_head.weight.detach().numpy(), 2 * w["model.embed_tokens.weight"])
    untied = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), tie_word_embeddings=False)
    assert "lm_head.weight" in to_numpy(untied)
    with pytest.raises(ValueError, match="missing.*lm_head.weight"):  # an untied model needs its head
        load_numpy(untied, w)
