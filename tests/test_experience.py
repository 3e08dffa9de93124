"""Experience records carry the critic scores each search used, per node."""
import math

import numpy as np
import pytest

from rl.experience import NodeExperience, ReplayBuffer, experiences_from_search
from rl.search import MCTS, Budget, Models
from tests.fakes import ScriptedPolicy, TableCritic
from tests.test_astar import DECOY_PRM, DECOY_Q, DECOY_STEPS, P, run
from tests.test_mcts import PROBLEM, PROMPT, ToyTask


def test_astar_records_carry_the_prm_and_q_of_each_step():
    res, _ = run(DECOY_STEPS, DECOY_PRM, DECOY_Q)
    nodes, _ = experiences_from_search("p", res, policy_version=3, critic_version=2)
    by_state = {n.state: n for n in nodes}
    b_answer = by_state[P + "b\nAnswer: 1\n"]
    assert b_answer.prm == pytest.approx(0.8) and b_answer.q == pytest.approx(0.8)
    assert b_answer.evaluation == pytest.approx(0.7)                      # f = g = min(0.7, 0.8)
    assert by_state[P + "a\nc\n"].q == pytest.approx(0.7) and by_state[P + "a\nc\n"].prm == pytest.approx(0.3)
    assert all(math.isnan(n.orm) for n in nodes)                          # A* reads no ORM
    assert (b_answer.policy_version, b_answer.critic_version) == (3, 2)
    assert res.tree.to_json()["nodes"][5]["q"] == pytest.approx(0.8)      # the export shows it too


def test_mcts_records_carry_the_leaf_score_and_prm(tmp_path):
    steps = {PROMPT: ["a\n"], PROMPT + "a\n": ["Answer: 1\n"]}
    task = ToyTask()
    models = Models(policy=ScriptedPolicy(steps), value=TableCritic({PROMPT + "a\n": 0.4}),
                    prm=TableCritic({PROMPT + "a\n": 0.8}), reward=task.reward)
    res = MCTS(simulations=3, branching=1, beta_value=0.5, beta_prm=0.5)(
        PROBLEM, task, models, Budget(), np.random.default_rng(0))
    nodes, traj = experiences_from_search("p", res, policy_version=1, critic_version=1)
    a, answer = nodes
    assert a.evaluation == pytest.approx(0.6) and a.prm == pytest.approx(0.8) and math.isnan(a.q)
    assert answer.terminal_reward == 1.0 and answer.evaluation == 1.0 and traj.reward == 1.0
    buf = ReplayBuffer(10)                                                  # the new fields survive a save
    buf.add(nodes)
    buf.save(tmp_path / "r.jsonl")
    back = list(ReplayBuffer.load(tmp_path / "r.jsonl"))
    assert back[0].prm == pytest.approx(0.8) and math.isnan(back[0].q)


def test_records_written_before_the_score_fields_still_load():
    old = dict(id="p/v0/1", problem_id="p", node=1, parent=0, depth=1, state="s", step="a", visits=1, value=0.5,
               value_target=1.0, terminal_reward=float("nan"), policy_version=0, critic_version=0)
    assert math.isnan(NodeExperience(**old).prm)
