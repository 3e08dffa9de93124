"""Q* A* on scripted trees whose pop orders are derived by hand.

Decoy tree (g_agg="min", PRM r of each step, Q(s, a) of each candidate; P = "Q: x\\n"):
    P                       Q(P, a) = 0.9  Q(P, b) = 0.8
    ├─ a   r 0.9            Q(a, Answer: 2) = 0.2   Q(a, c) = 0.7 (optimistic: best below c is 0.3)
    │  ├─ Answer: 2   r 0.2
    │  └─ c    r 0.3        Q(c, Answer: 4) = 0.3
    │     └─ Answer: 4  r 0.3
    └─ b   r 0.7            Q(b, Answer: 1) = 0.8   Q(b, e) = 0.5
       ├─ Answer: 1   r 0.8     <- optimal: g = min(0.7, 0.8) = 0.7
       └─ e    r 0.5        Q(e, Answer: 5) = 0.5
          └─ Answer: 5  r 0.5
Every Q(s, a) is >= the best min-reward reachable from a (checked below), so f = g + h never
underestimates the best terminal below an open state. Greedy by Q takes a -> c -> Answer: 4 (g 0.3).
A* (lam = 1), f = g + h, ids in push order:
    push 0 root            g 0            h 0.9   f 0.9
    pop 0  push 1 a        g 0.9          h 0.7   f 1.6
                2 b        g 0.7          h 0.8   f 1.5
    pop 1  push 3 Answer:2 g 0.2 terminal         f 0.2
                4 c        g 0.3          h 0.3   f 0.6
    pop 2  push 5 Answer:1 g 0.7 terminal         f 0.7
                6 e        g 0.5          h 0.5   f 1.0
    pop 6  push 7 Answer:5 g 0.5 terminal         f 0.5
    pop 5  terminal: answer 1
The popped non-terminals are exactly the states with f > f* = 0.7; the decoy a is popped once
and abandoned, c (f 0.6) is never popped and Answer: 4 never generated.
"""
import numpy as np
import pytest

from rl.models.policy import StepSample
from rl.search.astar import AStar, aggregate, f_score, heuristic
from rl.search.types import Budget, Models
from tests.fakes import TOY_PROBLEM, TOY_PROMPT, ToyTask

P = TOY_PROMPT
PROBLEM = TOY_PROBLEM
COMPLETION = "Answer: 0\n"


class ScriptedPolicy:
    """Proposes the listed steps for each prefix (a prefix not listed is an error); one token per character."""

    def __init__(self, steps: dict[str, list[str]]):
        self.steps = steps
        self.sampled: list[str] = []
        self.completed: list[str] = []

    def sample_steps(self, prefixes, n, *, temperature=1.0, max_new_tokens=24, seed=None):
        assert isinstance(seed, int)
        self.sampled += prefixes
        return [[StepSample(text=t, num_tokens=len(t), logprob=-1.0, finished=True) for t in self.steps[p][:n]]
                for p in prefixes]

    def complete(self, prefixes, *, max_new_tokens=128, temperature=0.0, seed=None):
        self.completed += prefixes
        return [StepSample(text=COMPLETION, num_tokens=len(COMPLETION), logprob=-1.0, finished=True)
                for _ in prefixes]


class ScriptedCritic:
    """Scores from a dict text -> score; a text not listed is an error. Records what it read."""

    def __init__(self, scores: dict[str, float]):
        self.scores = scores
        self.read: list[str] = []

    def score(self, texts):
        self.read += texts
        return np.array([self.scores[t] for t in texts], dtype=np.float64)


# ---- the decoy tree ------------------------------------------------------------------
DECOY_STEPS = {P: ["a\n", "b\n"],
               P + "a\n": ["Answer: 2\n", "c\n"], P + "a\nc\n": ["Answer: 4\n"],
               P + "b\n": ["Answer: 1\n", "e\n"], P + "b\ne\n": ["Answer: 5\n"]}
DECOY_PRM = {P + "a\n": 0.9, P + "a\nAnswer: 2\n": 0.2, P + "a\nc\n": 0.3, P + "a\nc\nAnswer: 4\n": 0.3,
             P + "b\n": 0.7, P + "b\nAnswer: 1\n": 0.8, P + "b\ne\n": 0.5, P + "b\ne\nAnswer: 5\n": 0.5}
DECOY_Q = {P + "a\n": 0.9, P + "a\nAnswer: 2\n": 0.2, P + "a\nc\n": 0.7, P + "a\nc\nAnswer: 4\n": 0.3,
           P + "b\n": 0.8, P + "b\nAnswer: 1\n": 0.8, P + "b\ne\n": 0.5, P + "b\ne\nAnswer: 5\n": 0.5}

# ---- a two-branch tree where lam=0, g_source="zero" and full A* pop differently ----------
FORK_STEPS = {P: ["a\n", "b\n"], P + "a\n": ["Answer: 2\n"], P + "b\n": ["Answer: 1\n"]}
FORK_PRM = {P + "a\n": 0.9, P + "a\nAnswer: 2\n": 0.9, P + "b\n": 0.4, P + "b\nAnswer: 1\n": 0.8}
FORK_Q = {P + "a\n": 0.3, P + "a\nAnswer: 2\n": 0.2, P + "b\n": 0.8, P + "b\nAnswer: 1\n": 0.9}


def run(steps, prm=None, q=None, *, budget=Budget(), value=None, **kw):
    policy = ScriptedPolicy(steps)
    models = Models(policy=policy, prm=None if prm is None else ScriptedCritic(prm),
                    q=None if q is None else ScriptedCritic(q), value=value)
    res = AStar(top_k=6, **kw)(PROBLEM, ToyTask(), models, budget, np.random.default_rng(0))
    return res, models


def terminal_paths(steps, state=P):
    """Every complete state reachable from `state` in a scripted tree."""
    out = []
    for s in steps.get(state, []):
        out += [state + s] if s.startswith("Answer:") else terminal_paths(steps, state + s)
    return out


def min_reward_after(prm, state, terminal):
    """Min PRM reward of the steps that lead from `state` down to `terminal`."""
    return min(prm[terminal[:i + 1]] for i in range(len(state), len(terminal)) if terminal[i] == "\n")


def greedy_by_q(steps, q, state=P):
    while state in steps:
        state = max((state + s for s in steps[state]), key=q.__getitem__)
    return state


# ---- pure pieces ---------------------------------------------------------------------
def test_aggregate_on_hand_numbers():
    r = [0.5, 0.9, 0.2, 0.7]
    assert aggregate(r, "min") == 0.2
    assert aggregate(r, "max") == 0.9
    assert aggregate(r, "sum") == pytest.approx(2.3)
    assert aggregate(r, "last") == 0.7
    assert aggregate(r, "zero") == 0.0
    for agg in ("min", "max", "sum", "last", "zero"):
        assert aggregate([], agg) == 0.0            # the root: no steps yet
    with pytest.raises(ValueError, match="mean"):
        aggregate(r, "mean")


def test_heuristic_and_f():
    assert heuristic([0.2, 0.7, 0.5]) == 0.7
    assert heuristic([]) == 0.0
    assert f_score(0.3, 0.5, lam=2.0) == pytest.approx(1.3)


def test_bad_hyperparameters_are_named():
    with pytest.raises(ValueError, match="g_agg"):
        AStar(g_agg="mean")
    with pytest.raises(ValueError, match="g_source"):
        AStar(g_source="orm")
    with pytest.raises(ValueError, match="top_k"):
        AStar(top_k=0)
    with pytest.raises(ValueError, match="lam"):
        AStar(lam=-1.0)


# ---- search --------------------------------------------------------------------------
def test_decoy_fixture_is_admissible_and_fools_greedy_by_q():
    for state, cands in DECOY_STEPS.items():
        for s in cands:
            child = state + s
            below = terminal_paths(DECOY_STEPS, child) if child in DECOY_STEPS else [child]
            assert DECOY_Q[child] >= max(min_reward_after(DECOY_PRM, state, t) for t in below), child
    assert greedy_by_q(DECOY_STEPS, DECOY_Q) == P + "a\nc\nAnswer: 4\n"


def test_astar_pops_only_what_it_must_and_returns_the_optimal_terminal():
    res, models = run(DECOY_STEPS, DECOY_PRM, DECOY_Q)
    t = res.tree
    assert res.popped == [0, 1, 2, 6, 5]
    assert res.chosen == 5 and res.answer == "1" and res.solution == "b\nAnswer: 1\n"
    # optimal: the highest min-reward over every terminal of the full tree, pushed or not
    g_all = {term: min_reward_after(DECOY_PRM, P, term) for term in terminal_paths(DECOY_STEPS)}
    assert max(g_all, key=g_all.get) == P + res.solution
    assert t.size == 8
    assert t.text[:8] == ["", "a\n", "b\n", "Answer: 2\n", "c\n", "Answer: 1\n", "e\n", "Answer: 5\n"]
    np.testing.assert_allclose(res.g, [0.0, 0.9, 0.7, 0.2, 0.3, 0.7, 0.5, 0.5])
    np.testing.assert_allclose(res.h, [0.9, 0.7, 0.8, 0.0, 0.3, 0.0, 0.5, 0.0])
    np.testing.assert_allclose(t.evaluation[:8], [0.9, 1.6, 1.5, 0.2, 0.6, 0.7, 1.0, 0.5])
    np.testing.assert_allclose(res.tree.step_q[1:res.tree.size], [0.9, 0.8, 0.2, 0.7, 0.8, 0.5, 0.5])
    np.testing.assert_array_equal(t.visits[:8], [1, 1, 1, 0, 0, 1, 1, 0])
    f_star = t.evaluation[res.chosen]
    assert set(res.popped[:-1]) == {i for i in range(t.size) if t.evaluation[i] > f_star}
    # candidates are sampled once per pushed non-terminal state; c's child was generated but never pushed
    assert models.policy.sampled == [P, P + "a\n", P + "b\n", P + "a\nc\n", P + "b\ne\n"]
    assert models.policy.completed == []
    assert res.spent.generated_tokens == 4 + 12 + 12 + 10 + 10
    assert res.spent.critic_calls == 7 + 8        # PRM on nodes 1..7, Q on 8 (state, step) pairs


def test_lam_zero_is_best_first_on_g():
    # f = g: pop 0; a (0.9) before b (0.4); a's Answer: 2 has g = min(0.9, 0.9) = 0.9 and is popped next
    res, _ = run(FORK_STEPS, FORK_PRM, FORK_Q, lam=0.0)
    assert res.popped == [0, 1, 3] and res.answer == "2"
    np.testing.assert_allclose(res.tree.evaluation[:4], [0.0, 0.9, 0.4, 0.9])


def test_zero_g_is_best_first_on_h():
    # f = h: b (h 0.9) before a (h 0.2); every terminal has f = 0, so the first pushed (b's Answer: 1) wins.
    # No PRM or value critic is needed.
    res, models = run(FORK_STEPS, None, FORK_Q, g_source="zero")
    assert res.popped == [0, 2, 1, 3] and res.answer == "1"
    assert res.tree.text[3] == "Answer: 1\n"
    np.testing.assert_allclose(res.tree.evaluation[:5], [0.8, 0.2, 0.9, 0.0, 0.0])
    np.testing.assert_array_equal(res.g, 0.0)


def test_full_astar_on_the_fork_weighs_both():
    # f = g + h: root 0.8; a 0.9 + 0.2 = 1.1, b 0.4 + 0.9 = 1.3; b's answer has g = min(0.4, 0.8) = 0.4,
    # below a (1.1), whose answer (g 0.9) is then popped before it
    res, _ = run(FORK_STEPS, FORK_PRM, FORK_Q)
    assert res.popped == [0, 2, 1, 4] and res.answer == "2"
    np.testing.assert_allclose(res.tree.evaluation[:5], [0.8, 1.1, 1.3, 0.4, 0.9])


def test_token_budget_stops_the_search_and_still_answers():
    unlimited, _ = run(DECOY_STEPS, DECOY_PRM, DECOY_Q)
    # root candidates spend 4 tokens, popping the root spends 24 more: 28 >= 16, so no second pop
    capped, models = run(DECOY_STEPS, DECOY_PRM, DECOY_Q, budget=Budget(max_tokens=16))
    assert capped.popped == [0]
    assert capped.chosen == 1                    # the best open state (f 1.6), completed by the policy
    assert capped.solution == "a\n" + COMPLETION and capped.answer == "0"
    assert models.policy.completed == [P + "a\n"]
    assert capped.spent.generated_tokens == 28 + len(COMPLETION) < unlimited.spent.generated_tokens


def test_max_expansions_returns_the_best_open_state_completed():
    res, _ = run(DECOY_STEPS, DECOY_PRM, DECOY_Q, max_expansions=2)
    assert res.popped == [0, 1] and res.chosen == 2
    assert res.solution == "b\n" + COMPLETION


def test_a_step_at_max_depth_ends_the_path_without_an_answer():
    deep = {P: ["a\n"], P + "a\n": ["a\n"]}
    res, models = run(deep, {P + "a\n": 0.5, P + "a\na\n": 0.5}, {P + "a\n": 0.5, P + "a\na\n": 0.5}, max_depth=2)
    assert res.tree.terminal[2] and res.popped == [0, 1, 2]
    assert res.chosen == 2 and res.answer is None
    assert models.policy.sampled == [P, P + "a\n"]   # no candidates for a terminal state


def test_identical_siblings_are_one_candidate():
    steps = {P: ["a\n", "a\n", "Answer: 1\n"], P + "a\n": ["Answer: 1\n"]}
    q = {P + "a\n": 0.1, P + "Answer: 1\n": 0.9, P + "a\nAnswer: 1\n": 0.1}
    prm = {P + "a\n": 0.1, P + "Answer: 1\n": 0.9, P + "a\nAnswer: 1\n": 0.1}
    res, models = run(steps, prm, q)
    assert [res.tree.text[c] for c in res.tree.children[0]] == ["a\n", "Answer: 1\n"]
    assert models.q.read[:2] == [P + "a\n", P + "Answer: 1\n"]
    assert res.spent.generated_tokens == (2 + 2 + 10) + 10   # both copies of "a\n" were generated and paid for


def test_missing_critics_are_named_before_any_generation():
    policy = ScriptedPolicy(DECOY_STEPS)
    with pytest.raises(ValueError, match=r"models\.q .*models\.prm"):
        AStar()(PROBLEM, ToyTask(), Models(policy=policy), Budget(), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"models\.q") as err:
        AStar()(PROBLEM, ToyTask(), Models(policy=policy, prm=ScriptedCritic(DECOY_PRM)), Budget(),
                np.random.default_rng(0))
    assert "prm" not in str(err.value)
    with pytest.raises(ValueError, match=r"models\.prm"):
        AStar()(PROBLEM, ToyTask(), Models(policy=policy, q=ScriptedCritic(DECOY_Q)), Budget(),
                np.random.default_rng(0))
    assert policy.sampled == []


def test_value_critic_stands_in_for_a_missing_prm():
    res, models = run(DECOY_STEPS, None, DECOY_Q, value=ScriptedCritic(DECOY_PRM))
    assert res.popped == [0, 1, 2, 6, 5] and res.answer == "1"
    assert len(models.value.read) == 7


# ---- several solutions: three branches, two of them agreeing on a lower-f answer -----------------
VOTE_STEPS = {P: ["a\n", "b\n", "c\n"], P + "a\n": ["Answer: 2\n"], P + "b\n": ["Answer: 1\n"],
              P + "c\n": ["Answer: 1\n"]}
VOTE_PRM = {P + "a\n": 0.9, P + "a\nAnswer: 2\n": 0.9, P + "b\n": 0.6, P + "b\nAnswer: 1\n": 0.6,
            P + "c\n": 0.5, P + "c\nAnswer: 1\n": 0.5}
VOTE_Q = {k: 0.5 for k in VOTE_PRM}


def test_more_solutions_pop_the_next_terminals_in_f_order_and_vote_by_f():
    # lam = 0: f = g = min PRM. Pops: root, a (0.9), Answer: 2 (0.9), b (0.6), Answer: 1 (0.6), c, Answer: 1 (0.5)
    first, _ = run(VOTE_STEPS, VOTE_PRM, VOTE_Q, lam=0.0)
    assert first.popped == [0, 1, 4] and first.answer == "2"
    more, _ = run(VOTE_STEPS, VOTE_PRM, VOTE_Q, lam=0.0, solutions=3)
    assert more.popped == [0, 1, 4, 2, 5, 3, 6]
    assert more.answer == "2" and more.chosen == 4                 # final="first": still the first popped
    vote, _ = run(VOTE_STEPS, VOTE_PRM, VOTE_Q, lam=0.0, solutions=3, final="vote")
    assert vote.answer == "1" and vote.chosen == 5                 # 1 holds 0.6 + 0.5 > 0.9; its best-f terminal
    two, _ = run(VOTE_STEPS, VOTE_PRM, VOTE_Q, lam=0.0, solutions=2, final="vote")
    assert two.popped == [0, 1, 4, 2, 5] and two.answer == "2"     # 0.9 > 0.6
    with pytest.raises(ValueError, match="solutions"):
        AStar(solutions=0)
    with pytest.raises(ValueError, match="final"):
        AStar(final="best")
