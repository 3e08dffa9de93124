"""rl.search.stats on hand-built trees: distinct children, merged samples, unique answers, pass_any."""
import numpy as np
import pytest

from rl.search import MCTS, Budget, Models, Tree
from rl.search.stats import DIVERSITY_KEYS, SearchStats, diversity_metrics, tree_stats
from tests.fakes import TOY_PROBLEM, TOY_PROMPT, ScriptedPolicy, TableCritic, ToyTask


def hand_tree() -> Tree:
    """    0 root
        1 "a\n" (2 samples merged into it)       2 "b\n"           3 "b\n" (same state as 2: no merge in beam/A*)
        4 "Answer: 1\n" (right)  5 "Answer: 2\n"   6 "Answer: 2\n"   7 "c\n" terminal without an answer
    """
    t = Tree(prompt=TOY_PROMPT)
    a, b, b2 = t.add_child(0, "a\n"), t.add_child(0, "b\n"), t.add_child(0, "b\n")
    t.add_child(a, "Answer: 1\n", terminal=True)
    t.add_child(a, "Answer: 2\n", terminal=True)
    t.add_child(b, "Answer: 2\n", terminal=True)
    t.add_child(b2, "c\n", terminal=True)
    t.merged[a] = 2
    return t


def test_tree_stats_counts_by_hand():
    s = tree_stats(hand_tree(), ToyTask(), TOY_PROBLEM, simulations=5)
    # expanded: root, a, b, b2; distinct children: root {a, b} 2, a 2, b 1, b2 1; deepest node: 2 steps
    assert s == SearchStats(expanded=4, children=6, sampled=7 + 2, merged=2, answers=2, solved=True, paths=3,
                            depth=2, simulations=5)


def test_tree_stats_unsolved_and_answerless():
    t = Tree(prompt=TOY_PROMPT)
    t.add_child(0, "Answer: 3\n", terminal=True)
    t.add_child(0, "x\n", terminal=True)            # stopped without an answer: not a complete solution
    s = tree_stats(t, ToyTask(), TOY_PROBLEM)
    assert (s.expanded, s.children, s.answers, s.solved, s.paths) == (1, 2, 1, False, 1)
    empty = tree_stats(Tree(prompt=TOY_PROMPT), ToyTask(), TOY_PROBLEM)
    assert (empty.expanded, empty.children, empty.merged, empty.answers, empty.solved) == (0, 0, 0, 0, False)


def test_diversity_metrics_pool_expansions_and_average_problems():
    a = tree_stats(hand_tree(), ToyTask(), TOY_PROBLEM, simulations=5)
    b = SearchStats(expanded=1, children=2, sampled=3, merged=1, answers=1, solved=False, depth=1, simulations=9)
    m = diversity_metrics([a, b])
    assert set(m) == {f"search/{k}" for k in DIVERSITY_KEYS}
    assert m["search/distinct_children"] == pytest.approx((6 + 2) / (4 + 1))
    assert m["search/merged_samples"] == 3
    assert m["search/merged_frac"] == pytest.approx(3 / (9 + 3))
    assert m["search/unique_answers"] == pytest.approx(1.5)
    assert m["search/pass_any"] == pytest.approx(0.5)
    assert m["search/multi_path"] == pytest.approx(0.5)   # a holds more than one complete solution, b none
    assert (m["search/nodes_expanded"], m["search/depth"], m["search/terminals"], m["search/simulations"]) == \
        pytest.approx((2.5, 1.5, 1.5, 7.0))
    assert diversity_metrics([]) == {}


def test_mcts_merge_shows_in_the_stats():
    task = ToyTask()
    models = Models(policy=ScriptedPolicy({TOY_PROMPT: ["a\n", "a\n", "b\n"]}), value=TableCritic({}),
                    reward=task.reward)
    res = MCTS(simulations=1, branching=3)(TOY_PROBLEM, task, models, Budget(), np.random.default_rng(0))
    s = tree_stats(res.tree, task, TOY_PROBLEM, simulations=res.spent.simulations)
    assert (s.expanded, s.children, s.merged, s.sampled, s.depth, s.simulations) == (1, 2, 1, 3, 1, 1)
