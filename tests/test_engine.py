"""The batched engine (rl/models/engine/) against plain HF forward/generate on tiny random models.

Most tests use a "sharp" tiny Llama (initializer_range 1.0): its logits are far apart, so greedy
decoding is robust to float rounding and different prompts end their steps at different times.
"""
import threading

import numpy as np
import pytest
import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

from rl.models.engine import Engine, PrefixCache, sample_tokens
from rl.models.tokenizer import build_char_tokenizer

PROMPTS = ["Q: 1+2\n", "Q: 12+3-4\n", "Hello", "abc", "Q: 7*8-3\n56\n", "x", "The cat sat", "9-4"]


def _config(cls, tok, **kw):
    return cls(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=64, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True,
               initializer_range=1.0, **kw)


def _model(cls=LlamaForCausalLM, config_cls=LlamaConfig, seed=0, **kw):
    tok = build_char_tokenizer()
    torch.manual_seed(seed)
    return cls(_config(config_cls, tok, **kw)).eval(), tok


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine OpenMP spin-waits slow them 100x."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def sharp_dir(tmp_path_factory):
    """The sharp tiny Llama (grouped-query attention: 4 heads, 2 KV heads), saved with save_pretrained."""
    model, tok = _model()
    path = tmp_path_factory.mktemp("sharp")
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def _engine(path, **kw):
    return Engine.from_pretrained(path, device="cpu", **kw)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _same(a, b) -> bool:
    """Equal samples: identical tokens, log-probs equal up to float rounding (a cached KV was computed in
    another batch shape, which changes the last bits)."""
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return (a.token_ids, a.text, a.finished, a.num_tokens) == (b.token_ids, b.text, b.finished, b.num_tokens) \
        and abs(a.logprob - b.logprob) < 1e-4


def _until_stop(ids: list[int], stops: set[int]) -> list[int]:
    for j, t in enumerate(ids):
        if t in stops:
            return ids[:j + 1]
    return ids


@torch.no_grad()
def _reference_greedy(model, tok, prompts, max_new, stops):
    """model.generate(do_sample=False) one prompt at a time, cut after the first stop token."""
    out = []
    for p in prompts:
        ids = torch.tensor([_ids(tok, p)])
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                             eos_token_id=list(stops), pad_token_id=tok.pad_token_id)
        out.append(_until_stop(gen[0, ids.shape[1]:].tolist(), stops))
    return out


# ---- greedy decoding matches generate ------------------------------------------------------------
@pytest.mark.parametrize("fast_path", [True, False])
def test_greedy_complete_is_token_identical_to_generate(sharp_dir, fast_path):
    eng = _engine(sharp_dir, fast_path=fast_path)
    out = eng.complete(PROMPTS, max_new_tokens=16)                  # one batch, prompts of different lengths
    ref = _reference_greedy(eng.model, eng.tokenizer, PROMPTS, 16, {eng.eos_id})
    assert [list(s.token_ids) for s in out] == ref
    # batched, left-padded generate agrees too
    enc = eng.tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        gen = eng.model.generate(**enc, max_new_tokens=16, do_sample=False, eos_token_id=eng.eos_id,
                                 pad_token_id=eng.tokenizer.pad_token_id)
    batched = [_until_stop(row, {eng.eos_id}) for row in gen[:, enc["input_ids"].shape[1]:].tolist()]
    assert [list(s.token_ids) for s in out] == batched


@pytest.mark.parametrize("cls,config_cls,extra", [
    (Qwen2ForCausalLM, Qwen2Config, {}),
    (Qwen3ForCausalLM, Qwen3Config, {"head_dim": 8}),
    (MistralForCausalLM, MistralConfig, {"sliding_window": None}),
])
def test_fast_path_other_llama_family_models(cls, config_cls, extra):
    model, tok = _model(cls, config_cls, **extra)
    eng = Engine(model, tok, torch.device("cpu"))
    assert eng.fast_path
    out = eng.sample_steps(PROMPTS, 1, temperature=0.0, max_new_tokens=12)
    ref = _reference_greedy(model, tok, PROMPTS, 12, {eng.newline_id, eng.eos_id})
    assert [list(r[0].token_ids) for r in out] == ref


def test_sliding_window_models_are_rejected():
    model, tok = _model(MistralForCausalLM, MistralConfig, sliding_window=16)
    with pytest.raises(ValueError, match="sliding_window"):
        Engine(model, tok, torch.device("cpu"))


# ---- logits with prefix reuse --------------------------------------------------------------------
@pytest.mark.parametrize("fast_path", [True, False])
def test_logits_with_prefix_reuse_match_full_recompute(sharp_dir, fast_path):
    eng = _engine(sharp_dir, fast_path=fast_path)
    fresh = _engine(sharp_dir, fast_path=fast_path, cache_tokens=0)
    stem = "Q: 12+3-4\n15-4\n"
    eng.complete([stem + "1"], max_new_tokens=6)                    # caches stem + "1" + its continuation
    eng.sample_steps([stem], 3, seed=0)                             # and stem's children
    before = eng.stats()["reused_tokens"]
    queries = [stem + "11\n", stem + "1", "Q: 12+9"]                # full edge, partial edge, short shared prefix
    got = eng.next_token_logits(queries)
    assert eng.stats()["reused_tokens"] - before >= len(stem) + len(stem) + 5
    want = fresh.next_token_logits(queries)
    assert fresh.stats()["reused_tokens"] == 0
    with torch.no_grad():
        full = torch.stack([eng.model(torch.tensor([_ids(eng.tokenizer, q)])).logits[0, -1] for q in queries])
    assert torch.allclose(got, full, atol=1e-4)
    assert torch.allclose(want, full, atol=1e-4)


def test_a_child_prompt_cached_up_to_its_last_token_is_decoded_without_a_prefill(sharp_dir):
    """A search's child prompt is its parent's retired sequence (cached but for the stop token): each of its
    sequences joins the decode batch with that one token to encode, and samples what a cache-less engine does."""
    eng = _engine(sharp_dir)
    fresh = _engine(sharp_dir, cache_tokens=0)
    kw = dict(temperature=1.0, max_new_tokens=10, seed=5)
    parent = "Q: 12+3-4\n"
    step = eng.sample_steps([parent], 1, **kw)[0][0]
    child = parent + step.text
    assert eng.eos_id not in step.token_ids                                  # so the text holds every token
    before = eng.stats()
    got = eng.sample_steps([child], 3, **kw)
    after = eng.stats()
    assert after["prefill_tokens"] - before["prefill_tokens"] == 3           # the last prompt token, once per sequence
    assert after["reused_tokens"] - before["reused_tokens"] == len(_ids(eng.tokenizer, child)) - 1
    assert after["shared_prompt_copies"] - before["shared_prompt_copies"] == 2
    assert _same(got, fresh.sample_steps([child], 3, **kw))


def test_score_matches_model_logprobs(sharp_dir):
    eng = _engine(sharp_dir)
    eng.complete(["Q: 1+2\n"], max_new_tokens=8)
    got = eng.score(["Q: 1+2\n", "abc"], ["3\nAnswer: 3\n", "d"])
    for (head, tail), g in zip([("Q: 1+2\n", "3\nAnswer: 3\n"), ("abc", "d")], got):
        h, t = _ids(eng.tokenizer, head), _ids(eng.tokenizer, tail)
        with torch.no_grad():
            lp = eng.model(torch.tensor([h + t])).logits[0].log_softmax(-1)
        want = sum(float(lp[len(h) - 1 + j, tok]) for j, tok in enumerate(t))
        assert g == pytest.approx(want, abs=1e-4)


# ---- stops and caps ----------------------------------------------------------------------------
def test_stops_and_caps_per_sequence_in_a_mixed_batch(sharp_dir):
    eng = _engine(sharp_dir)
    cap = 12
    out = eng.sample_steps(PROMPTS, 1, temperature=0.0, max_new_tokens=cap)
    stops = {eng.newline_id, eng.eos_id}
    kinds = set()
    for r in out:
        s = r[0]
        ids = list(s.token_ids)
        assert s.num_tokens == len(ids) <= cap
        assert not stops & set(ids[:-1])                            # nothing generated past a stop
        if s.finished:
            assert ids[-1] in stops
            kinds.add("newline" if ids[-1] == eng.newline_id else "eos")
        else:
            assert len(ids) == cap
            kinds.add("cap")
        assert s.text.endswith("\n") == (ids[-1] == eng.newline_id)
    assert {"newline", "cap"} <= kinds
    assert any(r[0].num_tokens < cap for r in out)                  # some stopped early while others ran on
    assert [list(r[0].token_ids) for r in out] == _reference_greedy(eng.model, eng.tokenizer, PROMPTS, cap, stops)


def test_each_caller_gets_its_own_cap_and_stops_in_a_shared_batch(sharp_dir):
    """Requests from several threads decode together; each keeps its max_new_tokens and stop tokens."""
    eng = _engine(sharp_dir)
    jobs = [("steps", "Hello", 5), ("steps", "The cat sat", 9), ("complete", "Q: 1+2\n", 14), ("steps", "abc", 30)]
    alone = {}
    for kind, p, cap in jobs:
        alone[p] = (eng.sample_steps([p], 2, max_new_tokens=cap, seed=3)[0] if kind == "steps"
                    else eng.complete([p], max_new_tokens=cap))
    shared = _engine(sharp_dir)
    results = {}

    def call(kind, p, cap):
        results[p] = (shared.sample_steps([p], 2, max_new_tokens=cap, seed=3)[0] if kind == "steps"
                      else shared.complete([p], max_new_tokens=cap))

    threads = [threading.Thread(target=call, args=j) for j in jobs]
    with shared._exclusive():                 # hold the loop until every request waits, so all share a batch
        for t in threads:
            t.start()
        while len(shared._waiting) < 7:
            threading.Event().wait(0.001)
    for t in threads:
        t.join(timeout=60)
    assert shared.stats()["max_batch"] == 7
    for kind, p, cap in jobs:
        assert _same(results[p], alone[p])
        assert all(s.num_tokens <= cap for s in results[p])
        if kind == "complete":
            assert all(shared.newline_id not in s.token_ids[:-1] or not s.finished for s in results[p])


def test_direct_tokenizer_calls_match_the_hf_wrapper(sharp_dir):
    """The engine encodes and decodes with a private copy of the Rust tokenizer; same ids and text as the wrapper."""
    eng = _engine(sharp_dir)
    tok = eng.tokenizer
    assert eng._rust_tokenizer is not None                          # the char tokenizer takes the direct path
    tok(["x", "xyz"], padding=True)                                 # padding set on the wrapper's Rust tokenizer
    texts = PROMPTS + ["", "tab\there, caf\u00e9 </s> end", "  two  spaces\n\n"]
    want = tok(texts, add_special_tokens=False)["input_ids"]
    assert eng._encode(texts) == want
    with eng._tok_lock:
        assert [eng._text(ids) for ids in want] == [tok.decode([t for t in ids if t != eng.eos_id]) for ids in want]


# ---- sampling ----------------------------------------------------------------------------------
def test_seeded_sampling_is_reproducible_and_ordered(sharp_dir):
    eng = _engine(sharp_dir)
    a = eng.sample_steps(PROMPTS[:3], 4, temperature=1.0, max_new_tokens=10, seed=7)
    b = eng.sample_steps(PROMPTS[:3], 4, temperature=1.0, max_new_tokens=10, seed=7)
    c = eng.sample_steps(PROMPTS[:3], 4, temperature=1.0, max_new_tokens=10, seed=8)
    assert [len(r) for r in a] == [4, 4, 4]
    assert _same(a, b)
    assert not _same(a, c)
    assert all(s.logprob <= 0 for r in a for s in r)
    assert len({s.token_ids for s in a[0]}) > 1                    # the n samples differ
    # the first prefix's samples do not depend on what else is in the call or on the batch size
    assert _same(eng.sample_steps(PROMPTS[:1], 4, temperature=1.0, max_new_tokens=10, seed=7)[0], a[0])
    small = _engine(sharp_dir, max_batch_size=2)                    # 12 sequences through 2 slots
    assert _same(small.sample_steps(PROMPTS[:3], 4, temperature=1.0, max_new_tokens=10, seed=7), a)
    assert small.stats()["max_batch"] == 2


@pytest.mark.parametrize("fast_path", [True, False])
def test_continuous_batching_matches_one_big_batch(sharp_dir, fast_path):
    """16 sequences through 3 slots: prompts are encoded while other slots decode, results unchanged."""
    big = _engine(sharp_dir, fast_path=fast_path)
    small = _engine(sharp_dir, fast_path=fast_path, max_batch_size=3)
    kw = dict(temperature=1.0, max_new_tokens=10, seed=4)
    want = big.sample_steps(PROMPTS, 2, **kw)
    assert _same(small.sample_steps(PROMPTS, 2, **kw), want)
    assert small.stats()["max_batch"] == 3 and small.stats()["steps"] > big.stats()["steps"]
    assert [s.token_ids for s in small.complete(PROMPTS, max_new_tokens=12)] == \
        [s.token_ids for s in big.complete(PROMPTS, max_new_tokens=12)]


def test_logprob_is_the_sum_under_the_temperature_scaled_distribution(sharp_dir):
    eng = _engine(sharp_dir)
    temp = 0.7
    out = eng.sample_steps(PROMPTS[:2], 3, temperature=temp, max_new_tokens=8, seed=1)
    for p, row in zip(PROMPTS[:2], out):
        for s in row:
            ids = _ids(eng.tokenizer, p) + list(s.token_ids)
            with torch.no_grad():
                lp = (eng.model(torch.tensor([ids])).logits[0] / temp).log_softmax(-1)
            start = len(ids) - len(s.token_ids)
            want = sum(float(lp[start - 1 + j, t]) for j, t in enumerate(s.token_ids))
            assert s.logprob == pytest.approx(want, abs=1e-4)


def test_sample_tokens_inverse_cdf_and_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]] * 4))
    one = torch.ones(4)
    tok, lp = sample_tokens(logits, one, one, torch.zeros(4, dtype=torch.long), torch.tensor([0.1, 0.6, 0.85, 0.99]))
    assert tok.tolist() == [0, 1, 2, 2]
    assert torch.allclose(lp, logits.gather(1, tok[:, None]).squeeze(1))
    # top-k 1 and a small top-p keep only the argmax (log-prob 0); temperature 0 is greedy on raw logits
    tok, lp = sample_tokens(logits, torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.tensor([1.0, 0.4, 1.0, 0.75]),
                            torch.tensor([1, 0, 0, 0]), torch.full((4,), 0.99))
    assert tok.tolist() == [0, 0, 0, 1]
    hinted = sample_tokens(logits, torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.tensor([1.0, 0.4, 1.0, 0.75]),
                           torch.tensor([1, 0, 0, 0]), torch.full((4,), 0.99), mode=(True, False, True))
    assert torch.equal(hinted[0], tok) and torch.equal(hinted[1], lp)     # the caller's mode skips the syncs only
    assert lp[:2].tolist() == [0.0, 0.0]
    assert lp[2].item() == pytest.approx(np.log(0.5), abs=1e-6)
    assert lp[3].item() == pytest.approx(np.log(0.3 / 0.8), abs=1e-6)


# ---- prefix cache ------------------------------------------------------------------------------
def _kv(ids):
    """Fake KV whose values are the token ids, so a reused prefix can be read back."""
    def kv_of(a, b):
        return torch.tensor(ids[a:b], dtype=torch.float32).view(1, 1, 1, b - a, 1)
    return kv_of


def _read(path):
    return [int(v) for node, used in path for v in node.kv[0, 0, 0, :used, 0]]


def test_prefix_cache_longest_prefix_split_and_lru_eviction():
    c = PrefixCache(max_tokens=10)
    c.insert([1, 2, 3, 4], _kv([1, 2, 3, 4]))
    c.insert([1, 2, 5], _kv([1, 2, 5]))                             # splits the edge after [1, 2]
    assert c.tokens == 5 and c.nodes == 3
    path, m = c.match([1, 2, 3, 9], limit=4)
    assert m == 3 and _read(path) == [1, 2, 3]
    path, m = c.match([1, 2, 5, 6], limit=2)                        # the limit caps the match
    assert m == 2
    c.match([1, 2, 3, 4], limit=4)                                  # [1, 2, 5] is now least recently used
    c.insert([7, 8, 9, 10, 11, 12], _kv([7, 8, 9, 10, 11, 12]))     # 11 tokens > 10: evict one leaf
    assert c.evictions == 1 and c.tokens == 10
    assert c.match([1, 2, 5], limit=3)[1] == 2
    assert c.match([1, 2, 3, 4], limit=4)[1] == 4
    c.insert(list(range(20, 40)), _kv(list(range(20, 40))))        # larger than the budget: nothing survives
    assert c.tokens <= 10
    assert c.match(list(range(20, 40)), limit=20)[1] == 0


def test_lru_eviction_by_token_budget_keeps_results(sharp_dir):
    prompts = ["Q: 1+2\n", "Q: 12+3-4\n", "Q: 7*8-3\n56\n", "The cat sat"]
    runs = {}
    for budget in (0, 40, 100_000):
        eng = _engine(sharp_dir, cache_tokens=budget)
        out = []
        for rnd in range(2):                                        # the second round can hit the cache
            for i, p in enumerate(prompts):
                out.append(eng.sample_steps([p], 3, max_new_tokens=10, seed=10 * rnd + i))
                out.append(eng.complete([p + "1"], max_new_tokens=10))
        runs[budget] = (out, eng.stats())
    small, big = runs[40][1], runs[100_000][1]
    assert small["evictions"] > 0 and small["cached_tokens"] <= 40
    assert big["evictions"] == 0 and big["reused_tokens"] > small["reused_tokens"] > 0
    assert runs[0][1]["reused_tokens"] == 0
    assert _same(runs[0][0], runs[40][0]) and _same(runs[0][0], runs[100_000][0])


def test_load_weights_invalidates_the_prefix_cache(sharp_dir):
    eng = _engine(sharp_dir)
    eng.sample_steps(["Q: 1+2\n"], 3, seed=0)
    assert eng.stats()["cached_tokens"] > 0
    other, _ = _model(seed=1)
    new = {k: v.detach().numpy().copy() for k, v in other.state_dict().items()}
    eng.load_weights(5, new)
    assert eng.version == 5 and eng.stats()["cached_tokens"] == 0
    lookups = eng.stats()["reused_tokens"]
    got = eng.next_token_logits(["Q: 1+2\n3"])
    assert eng.stats()["reused_tokens"] == lookups                  # nothing stale was reused
    with torch.no_grad():
        want = other(torch.tensor([_ids(eng.tokenizer, "Q: 1+2\n3")])).logits[0, -1]
    assert torch.allclose(got[0], want, atol=1e-4)
    from rl.models.weights import tied_names
    assert set(eng.weights()) == set(new) - set(tied_names(other.state_dict()))  # a tied head is given once


# ---- search integration --------------------------------------------------------------------------
def test_engine_runs_mcts_with_a_tiny_critic(tiny_model_dir):
    from rl.models import ValueCritic
    from rl.search import MCTS, Budget, Models
    from rl.tasks import ArithmeticTask
    from tests.conftest import EASY

    task = ArithmeticTask(EASY)
    problem = task.generate(1, seed=0)[0]
    engine = Engine.from_pretrained(tiny_model_dir, device="cpu")
    models = Models(policy=engine, value=ValueCritic.from_pretrained(tiny_model_dir, device="cpu"),
                    reward=task.reward)
    # with fast rollouts: each rollout completes the state that was just expanded, whose KV is cached
    search = MCTS(simulations=4, branching=2, step_max_tokens=8, max_depth=3, rollouts=1, beta_value=0.5,
                  beta_orm=0.5)
    res = search(problem, task, models, Budget(), np.random.default_rng(0))
    assert res.tree.size > 1 and res.spent.generated_tokens > 0
    stats = engine.stats()
    assert stats["cache_hits"] > 0 and stats["reused_tokens"] >= len(task.prompt(problem)) - 1
