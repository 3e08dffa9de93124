"""Self-consistency, weighted vote, best-of-N and step beam search on scripted models, derived by hand.

Tokens are characters: "Answer: 5\n" is 10 tokens, "a\n" is 2.

Beam table (beam_width = 2, expand = 3, max_depth = 3); node ids in creation order, PRM score in brackets:
    depth 1 under root:   1 "a\n" [.6]   2 "b\n" [.9]   3 "c\n" [.3]                  -> beams 2, 1
    depth 2 under 2 (b):  4 "d\n" [.5]   5 "Answer: 5\n" [.7] (terminal)   ("d\n" again: merged)
            under 1 (a):  6 "e\n" [.8]   7 "f\n" [.2]   8 "Answer: 7\n" [.4] (terminal)
                          live 4 [.5], 6 [.8], 7 [.2]                                  -> beams 6, 4
    depth 3 under 6 (ae): 9 "Answer: 9\n" [.95] (terminal)   10 "g\n" [.1]
            under 4 (bd): 11 "Answer: 5\n" [.6] (terminal)                              -> beams 10
    best terminal: 9 [.95] -> answer 9, solution "a\ne\nAnswer: 9\n"
    tokens: depth 1: 3 * 2 = 6; depth 2: 2 + 10 + 2 + 2 + 2 + 10 = 28; depth 3: 10 + 2 + 10 = 22; total 56
    critic texts: 3 + 5 + 3 = 11
"""
from dataclasses import dataclass

import numpy as np
import pytest

from rl.search.beam import StepBeam, top_k
from rl.search.sampling import BestOfN, SelfConsistency, WeightedVote, majority_vote
from rl.search.types import Budget, Models
from rl.tasks.base import Problem
from tests.fakes import TOY_PROMPT, ToyTask

PROMPT = TOY_PROMPT
PROBLEM = Problem(id="toy", question="x", answer="9")


@dataclass
class Sample:
    """The fields of rl.models.policy.StepSample; that module imports torch, which these tests do not need."""
    text: str
    num_tokens: int
    logprob: float
    finished: bool


class ScriptedPolicy:
    """complete() hands out `solutions` in order; sample_steps() gives the first n listed steps of each prefix."""

    def __init__(self, solutions=(), steps=None, logprobs=None):
        self.solutions = list(solutions)
        self.logprobs = logprobs or [-1.0] * len(self.solutions)
        self.steps = steps or {}
        self.complete_calls: list[list[str]] = []
        self.step_calls: list[list[str]] = []
        self.next = 0

    def complete(self, prefixes, *, max_new_tokens, temperature, seed=None):
        self.complete_calls.append(list(prefixes))
        out = []
        for _ in prefixes:
            t, lp = self.solutions[self.next], self.logprobs[self.next]
            self.next += 1
            out.append(Sample(t, len(t), lp, True))
        return out

    def sample_steps(self, prefixes, n, *, temperature, max_new_tokens, seed):
        assert isinstance(seed, int)
        self.step_calls.append(list(prefixes))
        return [[Sample(t, len(t), -1.0, True) for t in self.steps.get(p, [])[:n]] for p in prefixes]


class DictCritic:
    """Scores from a dict of full texts; unknown texts score `default`. Records every text it scored."""

    def __init__(self, scores, default=0.0):
        self.scores = scores
        self.default = default
        self.seen: list[str] = []

    def score(self, texts):
        self.seen += texts
        return np.array([self.scores.get(t, self.default) for t in texts])


def rng():
    return np.random.default_rng(0)


# ---- voting --------------------------------------------------------------------------------

def test_majority_vote_ignores_none_and_breaks_ties_by_first_occurrence():
    assert majority_vote(["5", None, "4", "4", "5"]) == "5"
    assert majority_vote([None, "4", None, "5", "4"]) == "4"
    assert majority_vote([None, None]) is None
    assert majority_vote(["1", "2", "2"], np.array([0.9, 0.3, 0.4])) == "1"   # 0.9 > 0.3 + 0.4


SC_SOLUTIONS = ["x\nAnswer: 2\n", "y\nAnswer: 3\n", "z\nAnswer: 3\n", "no answer\n", "w\nAnswer: 2\n",
                "v\nAnswer: 3\n"]


def test_self_consistency_picks_the_majority_answer():
    policy = ScriptedPolicy(SC_SOLUTIONS, logprobs=[-1.0, -2.0, -3.0, -4.0, -5.0, -6.0])
    res = SelfConsistency(n=6, batch_size=4)(PROBLEM, ToyTask(), Models(policy=policy), Budget(), rng())
    # votes: "2" x2, "3" x3, one None -> "3"; its first sample is the second draw, node 2
    assert res.answer == "3" and res.chosen == 2 and res.solution == "y\nAnswer: 3\n"
    t = res.tree
    assert t.size == 7 and t.children[0] == [1, 2, 3, 4, 5, 6]
    assert t.text[1:7] == SC_SOLUTIONS
    assert t.terminal[1:7].all()
    np.testing.assert_array_equal(t.logprob[1:7], [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0])
    assert [len(c) for c in policy.complete_calls] == [4, 2]        # batches of 4, the last one trimmed to n
    assert res.spent.generated_tokens == sum(len(s) for s in SC_SOLUTIONS)
    assert res.spent.critic_calls == 0


def test_self_consistency_without_any_answer_returns_the_first_sample():
    policy = ScriptedPolicy(["a\n", "b\n"])
    res = SelfConsistency(n=2)(PROBLEM, ToyTask(), Models(policy=policy), Budget(), rng())
    assert res.answer is None and res.chosen == 1 and res.solution == "a\n"


WV_SOLUTIONS = ["a\nAnswer: 2\n", "b\nAnswer: 2\n", "c\nAnswer: 1\n"]
WV_SCORES = {PROMPT + "a\nAnswer: 2\n": 0.3, PROMPT + "b\nAnswer: 2\n": 0.4, PROMPT + "c\nAnswer: 1\n": 0.9}


def test_weighted_vote_can_pick_a_minority_answer():
    # plain majority: "2" (2 votes to 1); weighted: "1" = 0.9 > "2" = 0.3 + 0.4 = 0.7
    sc = SelfConsistency(n=3)(PROBLEM, ToyTask(), Models(policy=ScriptedPolicy(WV_SOLUTIONS)), Budget(), rng())
    assert sc.answer == "2"
    orm = DictCritic(WV_SCORES)
    res = WeightedVote(n=3)(PROBLEM, ToyTask(), Models(policy=ScriptedPolicy(WV_SOLUTIONS), orm=orm), Budget(), rng())
    assert res.answer == "1" and res.chosen == 3
    np.testing.assert_allclose(res.tree.evaluation[1:4], [0.3, 0.4, 0.9])
    assert orm.seen == [PROMPT + s for s in WV_SOLUTIONS]              # the ORM reads prompt + solution
    assert res.spent.critic_calls == 3


def test_best_of_n_picks_the_top_scored_sample():
    sols = ["a\nAnswer: 4\n", "b\nAnswer: 5\n", "c\nAnswer: 4\n"]
    orm = DictCritic({PROMPT + sols[0]: 0.2, PROMPT + sols[1]: 0.8, PROMPT + sols[2]: 0.5})
    res = BestOfN(n=3)(PROBLEM, ToyTask(), Models(policy=ScriptedPolicy(sols), orm=orm), Budget(), rng())
    assert res.answer == "5" and res.chosen == 2 and res.solution == sols[1]   # the majority "4" loses
    np.testing.assert_allclose(res.tree.evaluation[1:4], [0.2, 0.8, 0.5])
    assert res.spent.critic_calls == 3


def test_best_of_n_ties_go_to_the_earlier_sample():
    sols = ["a\nAnswer: 4\n", "b\nAnswer: 5\n"]
    res = BestOfN(n=2)(PROBLEM, ToyTask(), Models(policy=ScriptedPolicy(sols), orm=DictCritic({}, default=0.5)),
                       Budget(), rng())
    assert res.chosen == 1 and res.answer == "4"


@pytest.mark.parametrize("method", [WeightedVote, BestOfN])
def test_orm_falls_back_to_value(method):
    value = DictCritic(WV_SCORES)
    res = method(n=3)(PROBLEM, ToyTask(), Models(policy=ScriptedPolicy(WV_SOLUTIONS), value=value), Budget(), rng())
    assert res.answer == "1"                                           # both pick "c\nAnswer: 1\n" (0.9)
    assert len(value.seen) == 3


@pytest.mark.parametrize("method", [WeightedVote, BestOfN])
def test_orm_methods_without_a_critic_raise_before_sampling(method):
    policy = ScriptedPolicy(WV_SOLUTIONS)
    with pytest.raises(ValueError, match=r"models\.orm.*models\.value"):
        method(n=3)(PROBLEM, ToyTask(), Models(policy=policy), Budget(), rng())
    assert policy.complete_calls == []


@pytest.mark.parametrize("method", [SelfConsistency, WeightedVote, BestOfN])
def test_sampling_methods_stop_at_the_token_budget(method):
    sols = [f"s\nAnswer: {i}\n" for i in range(8)]                     # 12 tokens each
    models = Models(policy=ScriptedPolicy(sols), orm=DictCritic({}))
    # batch 1: 24 tokens < 30 -> batch 2: 48 >= 30 -> stop: 4 of 8 drawn
    res = method(n=8, batch_size=2)(PROBLEM, ToyTask(), models, Budget(max_tokens=30), rng())
    assert res.tree.size == 5 and res.spent.generated_tokens == 48
    # one at a time stops closer: 12, 24, 36 -> 3 drawn
    models = Models(policy=ScriptedPolicy(sols), orm=DictCritic({}))
    res = method(n=8, batch_size=1)(PROBLEM, ToyTask(), models, Budget(max_tokens=30), rng())
    assert res.tree.size == 4 and res.spent.generated_tokens == 36


def test_at_least_one_sample_is_drawn():
    res = SelfConsistency(n=8, batch_size=1)(PROBLEM, ToyTask(), Models(policy=ScriptedPolicy(["Answer: 1\n"] * 8)),
                                             Budget(max_tokens=1), rng())
    assert res.tree.size == 2 and res.answer == "1"


# ---- step beam search -----------------------------------------------------------------------

BEAM_STEPS = {
    PROMPT: ["a\n", "b\n", "c\n"],
    PROMPT + "b\n": ["d\n", "Answer: 5\n", "d\n"],
    PROMPT + "a\n": ["e\n", "f\n", "Answer: 7\n"],
    PROMPT + "a\ne\n": ["Answer: 9\n", "g\n"],
    PROMPT + "b\nd\n": ["Answer: 5\n"],
}
BEAM_SCORES = {
    PROMPT + "a\n": 0.6, PROMPT + "b\n": 0.9, PROMPT + "c\n": 0.3,
    PROMPT + "b\nd\n": 0.5, PROMPT + "b\nAnswer: 5\n": 0.7,
    PROMPT + "a\ne\n": 0.8, PROMPT + "a\nf\n": 0.2, PROMPT + "a\nAnswer: 7\n": 0.4,
    PROMPT + "a\ne\nAnswer: 9\n": 0.95, PROMPT + "a\ne\ng\n": 0.1, PROMPT + "b\nd\nAnswer: 5\n": 0.6,
}


def run_beam(budget=Budget(), prm=True, value=False, **kw):
    policy = ScriptedPolicy(["Answer: 4\n"], steps=BEAM_STEPS)
    critic = DictCritic(BEAM_SCORES)
    models = Models(policy=policy, prm=critic if prm else None, value=critic if value else None)
    args = dict(beam_width=2, expand=3, max_depth=3) | kw
    return StepBeam(**args)(PROBLEM, ToyTask(), models, budget, rng()), policy, critic


def test_beam_keeps_the_top_k_at_each_depth_and_returns_the_best_terminal():
    res, policy, critic = run_beam()
    t = res.tree
    assert t.size == 12
    assert t.text[1:12] == ["a\n", "b\n", "c\n", "d\n", "Answer: 5\n", "e\n", "f\n", "Answer: 7\n",
                            "Answer: 9\n", "g\n", "Answer: 5\n"]
    np.testing.assert_array_equal(t.parent[1:12], [0, 0, 0, 2, 2, 1, 1, 1, 6, 6, 4])
    # the kept beams, best first, are exactly the prefixes expanded at the next depth
    assert policy.step_calls == [[PROMPT], [PROMPT + "b\n", PROMPT + "a\n"], [PROMPT + "a\ne\n", PROMPT + "b\nd\n"]]
    assert [i for i in range(12) if t.expanded[i]] == [0, 1, 2, 4, 6]
    assert [i for i in range(12) if t.terminal[i]] == [5, 8, 9, 11]
    np.testing.assert_allclose(t.evaluation[1:12], [0.6, 0.9, 0.3, 0.5, 0.7, 0.8, 0.2, 0.4, 0.95, 0.1, 0.6])
    assert res.chosen == 9 and res.answer == "9" and res.solution == "a\ne\nAnswer: 9\n"
    assert res.spent.generated_tokens == 56 and res.spent.critic_calls == 11
    assert policy.complete_calls == []                                 # a terminal was found: no completion
    assert t.to_json(res.chosen)["chosen_path"] == [0, 1, 6, 9]


def test_beam_without_a_terminal_completes_the_best_live_beam():
    res, policy, _ = run_beam(max_depth=1)                             # beams after depth 1: b [.9], a [.6]
    assert policy.complete_calls == [[PROMPT + "b\n"]]
    assert res.chosen == 2 and res.solution == "b\nAnswer: 4\n" and res.answer == "4"
    assert res.spent.generated_tokens == 6 + 10


def test_beam_stops_at_the_token_budget():
    # depth 1 spends 6 < 10, depth 2 brings it to 34 >= 10: depth 3 never starts; best terminal so far is 5 [.7]
    res, policy, _ = run_beam(budget=Budget(max_tokens=10))
    assert len(policy.step_calls) == 2 and res.spent.generated_tokens == 34 < 56
    assert res.tree.size == 9 and res.chosen == 5 and res.answer == "5"


def test_beam_still_completes_the_best_beam_when_the_budget_is_spent():
    # the one budget rule of every search: the closing greedy completion always runs, so there is an answer
    res, policy, _ = run_beam(budget=Budget(max_tokens=5), max_depth=1)
    assert len(policy.step_calls) == 1                       # no second depth past the cap
    assert policy.complete_calls == [["Q: x\nb\n"]] and res.chosen == 2
    assert res.solution == "b\nAnswer: 4\n" and res.answer == "4"


def test_beam_falls_back_to_value_and_raises_without_a_critic():
    res, _, critic = run_beam(prm=False, value=True)
    assert res.chosen == 9 and len(critic.seen) == 11
    with pytest.raises(ValueError, match=r"models\.prm.*models\.value"):
        run_beam(prm=False)


def test_beam_merges_identical_siblings_and_ends_at_unfinished_steps():
    steps = {PROMPT: ["a\n", "a\n", "tru"]}                            # "tru": cut off without a newline
    models = Models(policy=ScriptedPolicy(["Answer: 4\n"], steps=steps), prm=DictCritic({}))
    res = StepBeam(beam_width=2, expand=3, max_depth=2)(PROBLEM, ToyTask(), models, Budget(), rng())
    t = res.tree
    assert [t.text[i] for i in t.children[0]] == ["a\n", "tru"]
    assert not t.terminal[1] and t.terminal[2]
    assert res.spent.generated_tokens == 2 + 2 + 3                     # the merged duplicate was still generated


def test_top_k_breaks_ties_by_creation_order():
    assert top_k([4, 5, 6, 7], np.array([0.5, 0.9, 0.5, 0.1]), 3) == [5, 4, 6]
