"""The rule-based utility (Q*'s g from rules): each task's step check, RuleCritic, A* and the worker using it."""
from pathlib import Path

import numpy as np
import pytest

from rl.config import ArithmeticConfig, ConfigError, GSM8KConfig, SearchConfig, load_config
from rl.grading import RuleCritic, check_rule_config
from rl.models.policy import StepSample
from rl.rollout import RolloutWorker
from rl.search.astar import AStar
from rl.search.types import Budget, Models
from rl.tasks import ArithmeticTask, GSM8KTask
from rl.tasks.base import Problem
from rl.tasks.gsm8k import computations
from tests.fakes import ToyTask

ARITH = ArithmeticTask(ArithmeticConfig())
GSM8K_FILE = str(Path(__file__).resolve().parent / "data" / "gsm8k_test.jsonl")  # GSM8K test split (MIT)


# ---- arithmetic: a step keeps the value of the line above and makes progress -------------------------
@pytest.mark.parametrize("state, utilities", [
    ("Q: (3+5)*2-7\n8*2-7\n16-7\n9\nAnswer: 9\n", [1, 1, 1, 1]),
    ("Q: (3+5)*2-7\n8*2-7\n15-7\n8\nAnswer: 8\n", [1, 0, 1, 1]),   # 8*2 is not 15; the rest follows from 15-7
    ("Q: (3+5)*2-7\n8*2-7\n8*2-7\n", [1, 0]),                     # a copy keeps the value but makes no progress
    ("Q: 4+5\n9\nAnswer: 8\n", [1, 0]),                           # the answer line must give the value above
    ("Q: 4+5\n9\nAnswer: 9", [1, 1]),                             # the last step need not end in a newline
    ("Q: 4+5\nnine\nAnswer: 9\n", [0, 0]),                        # not an expression, and nothing to answer from
    ("Q: 12-5\n7\nAnswer: 7\n", [1, 1]),
    ("Q: 4+5\n", []),
])
def test_arithmetic_step_utilities_by_hand(state, utilities):
    assert ARITH.step_utilities(state) == [float(u) for u in utilities]


def test_arithmetic_reference_solutions_are_right_at_every_step():
    for p in ARITH.generate(200, 7, "train"):
        assert ARITH.step_utilities(ARITH.prompt(p) + p.solution) == [1.0] * len(p.solution.splitlines())


def test_a_state_of_another_format_is_refused():
    with pytest.raises(ValueError, match="Q: "):
        ARITH.step_utilities("4+5\n9\n")


# ---- GSM8K: a calculator check of every "a op b = c" ------------------------------------------------
@pytest.mark.parametrize("step, judged", [
    ("Janet sells 16 - 3 - 4 = 9 duck eggs a day.", [True]),
    ("She makes 9 * 2 = $18 every day", [True]),
    ("1,200 / 4 = 300", [True]),
    ("10/3 = 3.33 each", [True]),                        # a decimal may be rounded
    ("so 7*8 = 57 in all", [False]),
    ("So, Suzzane has $32 - $20 = $300 left.", [False]),   # a real slip in GSM8K's test split
    ("14 * 1/2 = 14 / 2 = 7 fries", [True, True]),       # a chain is judged pair by pair
    ("It takes 2 x 3 = 6 bolts", [True]),
    ("Overall, 120 – 80 - 15 = 25 more", [True]),          # an en dash is a minus
    ("20% of 50 = 10", []),                              # words inside the computation: not judged
    ("James slept 9 hours * 2/3 = 6 hours.", []),
    ("3 / 6 = 50%", []),
    ("5 - 1 - 1/2 = 3 1/2 hours", []),                   # a mixed number
    ("3x +4 - 4 = 28 - 4.", []),                         # algebra
    ("He has 5 apples = 5 fruits", []),                  # no operator: a restatement
])
def test_gsm8k_computations_by_hand(step, judged):
    assert computations(step) == judged


def test_gsm8k_step_utilities_on_the_real_file():
    task = GSM8KTask(GSM8KConfig(path=GSM8K_FILE))
    state = "Q: x\nShe makes 9 * 2 = $18 every day\nso 7*8 = 57 in all\nThe answer is 57\n"
    assert task.step_utilities(state) == [1.0, 0.0, 1.0]
    wrong = sum(min(task.step_utilities(task.prompt(p) + p.solution), default=1.0) < 1 for p in task.problems)
    assert len(task.problems) == 1319 and wrong <= 5  # 3 measured: GSM8K's own slips and one loose chain


# ---- RuleCritic ----------------------------------------------------------------------------------
def test_rule_critic_roles_read_the_last_step_or_the_whole_path():
    texts = ["Q: 4+5\n", "Q: (3+5)*2-7\n8*2-7\n15-7\n8\n", "Q: (3+5)*2-7\n8*2-7\n"]
    assert RuleCritic(ARITH, "prm").score(texts).tolist() == [1.0, 1.0, 1.0]   # the last step of the 2nd is right
    assert RuleCritic(ARITH, "value").score(texts).tolist() == [1.0, 0.0, 1.0]  # but a step above it is not
    assert RuleCritic(ARITH, "orm").score(texts).tolist() == [1.0, 0.0, 1.0]


def test_rule_critic_names_the_key_for_a_task_without_rules_or_a_bad_role():
    with pytest.raises(ValueError, match=r"search.rule_critics: task 'toy' has no rule-based step utility"):
        RuleCritic(ToyTask(), "prm")
    with pytest.raises(ValueError, match=r"'q' is not a rule critic role"):
        RuleCritic(ARITH, "q")


def test_rule_config_is_checked_against_the_task():
    check_rule_config(ARITH, SearchConfig(rule_critics=["prm", "orm", "value"], astar_g_source="rule"))
    with pytest.raises(ValueError, match=r'search.astar_g_source = "rule": task \'toy\''):
        check_rule_config(ToyTask(), SearchConfig(astar_g_source="rule"))
    with pytest.raises(ValueError, match=r"search.rule_critics: task 'toy'"):
        check_rule_config(ToyTask(), SearchConfig(rule_critics=["value"]))


def test_config_takes_rule_critics_and_refuses_unknown_roles():
    cfg = load_config("configs/arithmetic.yaml", ["search.rule_critics=[prm,orm]", "search.astar_g_source=rule"])
    assert cfg.search.rule_critics == ["prm", "orm"] and cfg.search.astar_g_source == "rule"
    with pytest.raises(ConfigError, match=r"search.rule_critics"):
        load_config("configs/arithmetic.yaml", ["search.rule_critics=[q]"])


# ---- A* with g from the rules ---------------------------------------------------------------------
P = "Q: (2+3)*4\n"
STEPS = {P: ["6*4\n", "5*4\n"], P + "6*4\n": ["24\n"], P + "6*4\n24\n": ["Answer: 24\n"],
         P + "5*4\n": ["20\n"], P + "5*4\n20\n": ["Answer: 20\n"]}
# Q prefers the wrong first step; with g from the rules that step has g = min(0) = 0 and loses:
#   push 0 root g 0 h .9 f .9 | pop 0: push 1 "6*4" g 0 h .9 f .9, 2 "5*4" g 1 h .6 f 1.6
#   pop 2: push 3 "20" g 1 h .6 f 1.6 | pop 3: push 4 "Answer: 20" g 1 h(q) .6 f 1.6 | pop 4: answer 20
Q = {P + "6*4\n": 0.9, P + "6*4\n24\n": 0.9, P + "6*4\n24\nAnswer: 24\n": 0.9,
     P + "5*4\n": 0.6, P + "5*4\n20\n": 0.6, P + "5*4\n20\nAnswer: 20\n": 0.6}


class _Policy:
    def sample_steps(self, prefixes, n, *, temperature=1.0, max_new_tokens=24, seed=None):
        return [[StepSample(text=t, num_tokens=len(t), logprob=-1.0, finished=True) for t in STEPS[p][:n]]
                for p in prefixes]


class _Critic:
    def __init__(self, table):
        self.table = table

    def score(self, texts):
        return np.array([self.table[t] for t in texts])


def _astar(g_source, task=ARITH):
    models = Models(policy=_Policy(), q=_Critic(Q))
    problem = Problem(id="p", question="(2+3)*4", answer="20")
    return AStar(top_k=2, g_source=g_source, terminal_h="q")(problem, task, models, Budget(),
                                                              np.random.default_rng(0))


def test_astar_with_rule_g_avoids_the_step_q_prefers():
    res = _astar("rule")
    assert res.popped == [0, 2, 3, 4] and res.answer == "20"
    assert res.tree.prm[1:res.tree.size].tolist() == [0.0, 1.0, 1.0, 1.0] and res.g.tolist() == [0, 0, 1, 1, 1]
    wrong = _astar("zero")  # best-first on Q alone follows the wrong step to the end
    assert wrong.answer == "24"


def test_astar_with_rule_g_on_a_task_without_rules_fails_before_generating():
    with pytest.raises(ValueError, match=r'AStar.g_source="rule": task \'toy\''):
        _astar("rule", ToyTask())


# ---- A* redraws: a right state drawn only wrong next steps draws again before A* settles for a wrong path
REDRAW_DRAWS = {P: [["5*4\n"]], P + "5*4\n": [["21\n"], ["20\n"]], P + "5*4\n21\n": [["Answer: 21\n"]],
                P + "5*4\n20\n": [["Answer: 20\n"]]}
REDRAW_Q = {P + "5*4\n": 0.6, P + "5*4\n21\n": 0.5, P + "5*4\n21\nAnswer: 21\n": 0.9,
            P + "5*4\n20\n": 0.6, P + "5*4\n20\nAnswer: 20\n": 0.6}
# redraws=1 (ids in push order; a redraw waits at f = min(g, 1): g for a state, 1 at the root; of equal f
# the deeper redraw goes first):
#   pop 0: push 1 "5*4" g 1 h .5 f 1.5, and 0 again at f 1 | pop 1: push 2 "21" g 0 h .9 f .9, and 1 again at
#   f 1 | pop 1 (f 1 like the root's redraw, but deeper): fresh "20": push 3 g 1 h .6 f 1.6 | pop 3: push 4
#   "Answer: 20" g 1 h(q) .6 f 1.6 | pop 4: answer 20; the root never redraws.
# Without: pop 0, pop 1, pop 2 (push 3 "Answer: 21" g 0 f .9), pop 3: answer 21.
# The root's first draw wrong: pop 0: push 1 "6*4" g 0 f .9, and 0 again at f 1 | pop 0: fresh "5*4", push 2
#   g 1 f 1.5 | pop 2, 3 "20", 4 "Answer: 20": answer 20. Without: 6*4 -> 24 -> Answer: 24.
ROOT_DRAWS = {**REDRAW_DRAWS, P: [["6*4\n"], ["5*4\n"]], P + "5*4\n": [["20\n"]], P + "6*4\n": [["24\n"]],
              P + "6*4\n24\n": [["Answer: 24\n"]]}
ROOT_Q = {**REDRAW_Q, **Q}


class _QueuePolicy:
    """Each call at a state takes that state's next list of draws (the last one repeats)."""

    def __init__(self, draws):
        self.draws, self.calls = draws, {}

    def sample_steps(self, prefixes, n, *, temperature=1.0, max_new_tokens=24, seed=None):
        out = []
        for p in prefixes:
            k = self.calls[p] = self.calls.get(p, -1) + 1
            texts = self.draws[p][min(k, len(self.draws[p]) - 1)]
            out.append([StepSample(text=t, num_tokens=len(t), logprob=-1.0, finished=True) for t in texts[:n]])
        return out


@pytest.mark.parametrize("draws, q, redraws, popped, answer, tokens", [
    (REDRAW_DRAWS, REDRAW_Q, 1, [0, 1, 1, 3, 4], "20", 4 + 3 + 11 + 3 + 11),
    (REDRAW_DRAWS, REDRAW_Q, 0, [0, 1, 2, 3], "21", 4 + 3 + 11),
    (ROOT_DRAWS, ROOT_Q, 1, [0, 0, 2, 3, 4], "20", 4 + 3 + 4 + 3 + 11),
    (ROOT_DRAWS, ROOT_Q, 0, [0, 1, 2, 3], "24", 4 + 3 + 11),
])
def test_astar_redraws_a_right_state_before_taking_a_wrong_path(draws, q, redraws, popped, answer, tokens):
    models = Models(policy=_QueuePolicy(draws), q=_Critic(q))
    res = AStar(top_k=2, g_source="rule", terminal_h="q", redraws=redraws)(
        Problem(id="p", question="(2+3)*4", answer="20"), ARITH, models, Budget(), np.random.default_rng(0))
    assert res.popped == popped and res.answer == answer
    assert res.spent.generated_tokens == tokens  # the redraws' samples are spent too


# ---- the worker fills the configured roles --------------------------------------------------------
def test_worker_gives_the_rule_critic_the_configured_roles(tiny_model_dir):
    worker = RolloutWorker(ARITH, SearchConfig(rule_critics=["orm"]), str(tiny_model_dir), str(tiny_model_dir))
    models = worker.models()
    assert isinstance(models.orm, RuleCritic) and models.prm is None and not isinstance(models.value, RuleCritic)
    assert "orm" not in worker.weights()  # no weights to publish or load
    with pytest.raises(ValueError, match="search.rule_critics"):
        RolloutWorker(ToyTask(), SearchConfig(rule_critics=["prm"]), str(tiny_model_dir), str(tiny_model_dir))
