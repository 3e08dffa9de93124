"""Steps ended by the task's termination function (AlphaLLM options) in the searches and both backends.

Search tests use StreamPolicy (tests/fakes.py): raw continuations cut into steps as an engine cuts them.
Backend tests use the tiny random Llama; for the paragraph termination its output is restricted to a
five-character alphabet (a logit bias on the LM head, no EOS) so that formulas and paragraph breaks
come within a few dozen tokens.
"""
import numpy as np
import pytest
import torch

from rl.search import MCTS, AStar, Budget, Models, StepBeam
from rl.search.types import sample_steps
from rl.tasks.base import Problem
from rl.tasks.termination import CodeStep, FormulaParagraphStep, NewlineStep
from tests.fakes import TOY_PROMPT, StreamPolicy, TableCritic, ToyTask

P = TOY_PROMPT


class ParagraphTask(ToyTask):
    """A word problem: a step is a paragraph holding a formula; the answer may close any step."""
    termination = FormulaParagraphStep()

    def is_terminal(self, step):
        return "Answer:" in step


class CodeTask(ToyTask):
    termination = CodeStep()


def _problem(answer: str) -> Problem:
    return Problem(id="toy", question="x", answer=answer)


# ---- searches ----------------------------------------------------------------------------------
SETUP = "We count the apples in both baskets.\n\n"          # a paragraph break before any formula
FORMULA = "There are 3 + 4 = 7 apples.\n\n"


def test_mcts_step_goes_on_past_a_paragraph_break_without_a_formula():
    assert not ParagraphTask.termination.ends(SETUP)
    policy = StreamPolicy({P: [SETUP + FORMULA + "Answer: 7\n"], P + SETUP + FORMULA: ["Answer: 7\n"]})
    task = ParagraphTask()
    models = Models(policy=policy, value=TableCritic({}, default=0.5), reward=task.reward)
    search = MCTS(simulations=3, branching=1, step_max_tokens=96)
    res = search(_problem("7"), task, models, Budget(), np.random.default_rng(0))
    t = res.tree
    # sim 1 expands the root: one step, the setup paragraph and the formula paragraph together
    assert t.text[1] == SETUP + FORMULA and not t.terminal[1]
    # sim 2 expands it: "Answer: 7\n" ends at EOS (no paragraph break), an answer step
    assert t.text[2] == "Answer: 7\n" and t.terminal[2]
    assert res.solution == SETUP + FORMULA + "Answer: 7\n" and res.answer == "7"
    assert policy.terminations == [task.termination] * 2        # the search asked for the task's steps


def test_beam_code_block_runs_to_its_dedent():
    block = "def f(x):\n    y = x + 1\n    return y\n"
    # the dedented line closes the block: the engine had to generate it, and cut it off the step
    assert not CodeTask.termination.ends(block) and CodeTask.termination.ends(block + "Answer: 1\n")
    policy = StreamPolicy({P: [block + "Answer: 1\n"], P + block: ["Answer: 1\n"]})
    task = CodeTask()
    models = Models(policy=policy, value=TableCritic({}, default=0.5))
    search = StepBeam(beam_width=1, expand=1, max_depth=3, step_max_tokens=96)
    res = search(_problem("1"), task, models, Budget(), np.random.default_rng(0))
    t = res.tree
    # complete by the backend's word (StepSample.complete), though its text alone does not end a step
    assert t.text[1] == block and not t.terminal[1]
    assert t.text[2] == "Answer: 1\n" and t.terminal[2]
    assert res.solution == block + "Answer: 1\n" and res.answer == "1"


def test_astar_code_block_runs_to_its_blank_line():
    block = "for i in range(3):\n    total += i\n\n"
    policy = StreamPolicy({P: [block + "Answer: 3\n"], P + block: ["Answer: 3\n"]})
    task = CodeTask()
    models = Models(policy=policy, value=TableCritic({}, default=0.5))
    search = AStar(top_k=1, max_expansions=5, step_max_tokens=96)
    res = search(_problem("3"), task, models, Budget(), np.random.default_rng(0))
    t = res.tree
    assert t.text[1] == block and not t.terminal[1]
    assert res.solution == block + "Answer: 3\n" and res.answer == "3"
    assert policy.terminations == [task.termination] * 2


def test_newline_tasks_call_backends_as_before():
    policy = StreamPolicy({P: ["a\nb\n"]})
    out = sample_steps(policy, ToyTask(), [P], 1, temperature=1.0, max_new_tokens=8, seed=0)
    assert out[0][0].text == "a\n" and policy.terminations == [None]  # no termination keyword at all


# ---- backends on the tiny model ------------------------------------------------------------------
PREFIXES = ["Q: 1+2\n", "Q: 5-3\n"]
ALPHABET = "1+a\n"  # formulas ("1+1", "a+1"), text without one ("aa"), paragraph breaks


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models gain nothing from intra-op threads on a busy machine
    yield
    torch.set_num_threads(old)


def _small_alphabet_model(path):
    """The tiny model and its tokenizer, writing only ALPHABET (a -1e4 logit bias on every other token)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    bias = torch.full((model.config.vocab_size,), -1e4)
    bias[[tok.convert_tokens_to_ids(c) for c in ALPHABET]] = 0.0
    model.lm_head.bias = torch.nn.Parameter(bias)
    return model, tok


def _check_paragraph_steps(rows, max_new_tokens):
    term = FormulaParagraphStep()
    steps = [s for row in rows for s in row]
    for s in steps:
        assert s.finished == s.complete                           # no EOS: finished means the termination ended it
        assert s.num_tokens <= max_new_tokens
        if s.complete:
            assert term.ends(s.text) and term.split(s.text) == [s.text] and s.num_tokens == len(s.text)
    # some step went on past a stop that did not end it (a paragraph break before any formula)
    assert any(s.complete and "\n\n" in s.text[:-2] for s in steps)


def test_policy_newline_termination_is_the_default_and_paragraphs_end_where_ends_says(tiny_model_dir):
    from rl.models import Policy
    pol = Policy.from_pretrained(tiny_model_dir, device="cpu")
    kw = dict(temperature=1.0, max_new_tokens=8, seed=11)
    plain = pol.sample_steps(PREFIXES, 3, **kw)
    newline = pol.sample_steps(PREFIXES, 3, termination=NewlineStep(), **kw)
    assert [[(s.text, s.num_tokens, s.finished) for s in r] for r in newline] == \
        [[(s.text, s.num_tokens, s.finished) for s in r] for r in plain]
    assert np.allclose([s.logprob for r in newline for s in r], [s.logprob for r in plain for s in r])

    model, tok = _small_alphabet_model(tiny_model_dir)
    tok.padding_side = "left"
    pol = Policy(model, tok, torch.device("cpu"))
    kw = dict(temperature=1.0, max_new_tokens=30, seed=1, termination=FormulaParagraphStep())
    rows = pol.sample_steps(PREFIXES, 4, **kw)
    _check_paragraph_steps(rows, 30)
    assert [[s.text for s in r] for r in pol.sample_steps(PREFIXES, 4, **kw)] == [[s.text for s in r] for r in rows]


def test_engine_newline_termination_is_the_default_and_rounds_decode_straight_through(tiny_model_dir):
    from rl.models.engine import Engine
    eng = Engine.from_pretrained(tiny_model_dir, device="cpu")
    kw = dict(temperature=1.0, max_new_tokens=8, seed=11)
    plain = eng.sample_steps(PREFIXES, 3, **kw)
    newline = eng.sample_steps(PREFIXES, 3, termination=NewlineStep(), **kw)
    assert [[(s.token_ids, s.text, s.finished) for s in r] for r in newline] == \
        [[(s.token_ids, s.text, s.finished) for s in r] for r in plain]

    model, tok = _small_alphabet_model(tiny_model_dir)
    eng = Engine(model, tok, torch.device("cpu"))
    rows = eng.sample_steps(PREFIXES, 1, temperature=1.0, max_new_tokens=30, seed=10,
                            termination=FormulaParagraphStep())
    _check_paragraph_steps(rows, 30)
    # a step's rounds take the rest of its uniforms: the tokens of one decode that never stops
    through = eng.complete(PREFIXES, temperature=1.0, max_new_tokens=30, seed=10)
    for (step,), whole in zip(rows, through):
        assert whole.token_ids[:step.num_tokens] == step.token_ids


def test_cut_after_a_dedent_keeps_the_step_and_counts_the_dedented_line(tiny_model_dir):
    from rl.models.engine import Engine
    from rl.models.engine.stops import _Step, cut_rounds
    from rl.models.policy import _Piece, cut_step
    lines = ["if x:\n", "    y\n", "z\n"]                 # one round (piece) per line; "z" closes the block
    step, logprob = cut_step(CodeStep(), [_Piece(t, len(t), -1.0 - i) for i, t in enumerate(lines)])
    assert (step, logprob) == ("if x:\n    y\n", -3.0)
    eng = Engine.from_pretrained(tiny_model_dir, device="cpu")
    ids = eng.tokenizer("".join(lines), add_special_tokens=False)["input_ids"]
    st = _Step(seq=None, prompt=[], uniforms=None, tokens=ids, starts=[0, 6, 12], logprobs=[-1.0, -2.0, -3.0])
    out = cut_rounds(eng, st, CodeStep(), "".join(lines))
    assert (out.text, out.logprob, out.num_tokens, out.complete) == ("if x:\n    y\n", -3.0, 14, True)
    assert out.token_ids == tuple(ids[:12])
