"""MCTS on a scripted toy problem whose visit counts and backed-up values are derived by hand.

Tree (node ids in creation order), c_uct = 1, branching = 2:
    0 root "Q: x\n"            V = 0.5
    1 "a\n"  V = 0.6           2 "b\n"  V = 0.4
    3 "Answer: 1\n" (right)    5 "Answer: 3\n" (wrong)
    4 "Answer: 2\n" (wrong)    6 "c\n"
Simulations:
    1 expand root, back up V(root)=0.5
    2 root -> 1 (unvisited), expand, back up 0.6
    3 root -> 2 (unvisited), expand, back up 0.4
    4 UCT at root, ln 3: node1 0.6+1.048 > node2 0.4+1.048 -> 1 -> 3 (terminal, reward 1)
    5 ln 4: node1 0.8+0.833 = 1.633 > node2 0.4+1.177 = 1.577 -> 1 -> 4 (reward 0)
    6 ln 5: node1 0.533+0.732 = 1.266 < node2 0.4+1.269 = 1.669 -> 2 -> 5 (reward 0)
"""
import numpy as np

from rl.labels import best_trajectory, mc_value_targets, verified_terminals
from rl.search import MCTS, Budget, Models, Tree, backup, uct_select
from tests.fakes import TOY_PROBLEM, TOY_PROMPT, ScriptedPolicy, TableCritic, ToyTask

PROMPT = TOY_PROMPT


PROBLEM = TOY_PROBLEM
STEPS = {PROMPT: ["a\n", "b\n"], PROMPT + "a\n": ["Answer: 1\n", "Answer: 2\n"], PROMPT + "b\n": ["Answer: 3\n", "c\n"]}
VALUES = {PROMPT: 0.5, PROMPT + "a\n": 0.6, PROMPT + "b\n": 0.4}


def run(simulations=6, reward=True, **kw):
    task = ToyTask()
    models = Models(policy=ScriptedPolicy(STEPS), value=TableCritic(VALUES),
                    reward=task.reward if reward else None)
    search = MCTS(simulations=simulations, branching=2, c_uct=1.0, **kw)
    return search(PROBLEM, task, models, Budget(), np.random.default_rng(0))


def test_visits_and_values_match_hand_derivation():
    res = run()
    t = res.tree
    assert t.size == 7
    assert [t.text[i] for i in range(7)] == ["", "a\n", "b\n", "Answer: 1\n", "Answer: 2\n", "Answer: 3\n", "c\n"]
    np.testing.assert_array_equal(t.visits[:7], [6, 3, 2, 1, 1, 1, 0])
    np.testing.assert_allclose(t.value_sum[:7], [2.5, 1.6, 0.4, 1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose([t.q(i) for i in range(3)], [2.5 / 6, 1.6 / 3, 0.2])
    assert res.chosen == 3 and res.answer == "1" and res.solution == "a\nAnswer: 1\n"
    assert res.spent.generated_tokens == 2 + 2 + 10 + 10 + 10 + 2  # every sampled step, char tokens
    assert res.spent.critic_calls == 3


def test_critic_only_scores_terminals_with_the_critic():
    res = run(reward=False)
    t = res.tree
    assert np.isnan(t.reward[:7]).all()        # no labels were used
    assert t.evaluation[3] == 0.0               # the critic's default for unknown states


def test_uct_prefers_unvisited_then_bound():
    t = Tree("p")
    a, b = t.add_child(0, "a"), t.add_child(0, "b")
    assert uct_select(t, 0, c=1.0) == a
    backup(t, a, 1.0)
    assert uct_select(t, 0, c=1.0) == b
    backup(t, b, 0.0)
    backup(t, a, 1.0)
    # root N = 3; a: 1 + sqrt(ln3/2) = 1.741, b: 0 + sqrt(ln3/1) = 1.048
    assert uct_select(t, 0, c=1.0) == a
    assert uct_select(t, 0, c=5.0) == b      # enough exploration flips it: 1 + 5*0.741 < 5*1.048


def test_identical_siblings_are_merged():
    steps = {PROMPT: ["a\n", "a\n", "b\n"]}
    task = ToyTask()
    models = Models(policy=ScriptedPolicy(steps), value=TableCritic({}), reward=task.reward)
    res = MCTS(simulations=1, branching=3)(PROBLEM, task, models, Budget(), np.random.default_rng(0))
    assert [res.tree.text[i] for i in res.tree.children[0]] == ["a\n", "b\n"]


def test_token_budget_stops_the_search():
    res = run(simulations=50)
    unlimited = res.spent.generated_tokens
    task = ToyTask()
    models = Models(policy=ScriptedPolicy(STEPS), value=TableCritic(VALUES), reward=task.reward)
    capped = MCTS(simulations=50, branching=2)(PROBLEM, task, models, Budget(max_tokens=4), np.random.default_rng(0))
    assert capped.spent.generated_tokens < unlimited
    assert capped.tree.size == 3                 # one expansion spends the 4 tokens; no simulation starts after that


def test_max_depth_makes_a_terminal_without_answer():
    deep = {PROMPT: ["a\n"], PROMPT + "a\n": ["a\n"]}
    task = ToyTask()
    models = Models(policy=ScriptedPolicy(deep), value=TableCritic({}), reward=task.reward)
    res = MCTS(simulations=5, branching=1, max_depth=2)(PROBLEM, task, models, Budget(), np.random.default_rng(0))
    assert res.tree.terminal[2] and res.tree.reward[2] == 0.0


def test_monte_carlo_value_targets_and_best_trajectory():
    t = run().tree
    targets = mc_value_targets(t)
    np.testing.assert_allclose(targets[:6], [1 / 3, 0.5, 0.0, 1.0, 0.0, 0.0])
    assert np.isnan(targets[6])                  # no terminal below node 6
    assert best_trajectory(t) == 3
    assert verified_terminals(t, 4) == [3]       # the one right terminal
    t.reward[5] = 1.0                            # a second right one, with another text
    assert verified_terminals(t, 4) == [3, 5] and verified_terminals(t, 1) == [3]
    t.text[4] = t.text[3]                        # node 4 now repeats node 3's solution: counted once
    t.reward[4] = 1.0
    assert len(verified_terminals(t, 4)) == 2 and 5 in verified_terminals(t, 4)
    t.reward[4] = t.reward[5] = 0.0
    t.reward[3] = 0.0
    assert best_trajectory(t) is None            # no right answer anywhere


def test_final_by_value_picks_best_scored_terminal():
    res = run(final="value")
    assert res.chosen == 3
