"""Labels read off searched trees' node records (rl.labels: tree_transitions, best_reward_below,
terminal_examples) on a hand-built tree, and FQI over those transitions reaching the tree's optimum.

The tree of one search (node: step, terminal reward):
    0 root
    ├── 1 "a"            ├── 3 "c" r=1          (terminal)
    │                    └── 4 "d" r=0          (terminal)
    └── 2 "b"            ├── 5 "e"  (unexpanded, unscored leaf)
                         └── 6 "f" ── 7 "g" r=0 (terminal)
Kept transitions: 3, 4, 7 (terminal), 6 (child 7), 1 (children 3, 4), 2 (child 6; 5 is dropped).
Optimal Q with gamma=1: Q(3)=1, Q(4)=0, Q(7)=0, Q(6)=0, Q(1)=1, Q(2)=0.
"""
import numpy as np

from rl.experience import NodeExperience
from rl.labels import best_reward_below, fqi_targets, terminal_examples, tree_transitions

NAN = float("nan")
TREE = {1: (0, "a", NAN), 2: (0, "b", NAN), 3: (1, "c", 1.0), 4: (1, "d", 0.0), 5: (2, "e", NAN),
        6: (2, "f", NAN), 7: (6, "g", 0.0)}


def _nodes(pid="p", version=1):
    texts = {0: "Q"}
    out = []
    for i, (parent, step, r) in TREE.items():
        texts[i] = texts[parent] + step
        out.append(NodeExperience(id=f"{pid}/v{version}/{i}", problem_id=pid, node=i, parent=parent, depth=0,
                                  state=texts[i], step=step, visits=1, value=0.0, value_target=NAN,
                                  terminal_reward=r, policy_version=version, critic_version=version))
    return out


def test_tree_transitions_keep_expanded_and_terminal_nodes():
    tr = tree_transitions(_nodes())
    by_text = {t: k for k, t in enumerate(tr.texts)}
    assert set(tr.texts) == {"Qa", "Qb", "Qac", "Qad", "Qbf", "Qbfg"}   # the unexpanded leaf "Qbe" is out
    assert tr.done[by_text["Qac"]] and tr.rewards[by_text["Qac"]] == 1.0
    assert not tr.done[by_text["Qa"]] and tr.rewards[by_text["Qa"]] == 0.0
    assert sorted(tr.texts[j] for j in tr.next_candidates[by_text["Qa"]]) == ["Qac", "Qad"]
    assert [tr.texts[j] for j in tr.next_candidates[by_text["Qb"]]] == ["Qbf"]
    assert len(tr.next_candidates[by_text["Qad"]]) == 0


def test_two_searches_of_one_problem_stay_apart():
    tr = tree_transitions(_nodes(version=1) + _nodes(version=2))
    assert len(tr.texts) == 12
    for k, cands in enumerate(tr.next_candidates):   # candidates never cross into the other search
        assert all((j < 6) == (k < 6) for j in cands)


def test_fqi_over_tree_transitions_reaches_the_optimum():
    tr = tree_transitions(_nodes())
    q = np.zeros(len(tr.texts))
    errors = []
    for _ in range(4):  # tabular fit: Q_{k+1} = y_k, the target frozen within an iteration
        y = fqi_targets(tr.rewards, [q[c] for c in tr.next_candidates], tr.done, gamma=1.0)
        errors.append(float(np.mean((q - y) ** 2)))
        q = y
    want = {"Qa": 1, "Qb": 0, "Qac": 1, "Qad": 0, "Qbf": 0, "Qbfg": 0}
    assert {t: q[k] for k, t in enumerate(tr.texts)} == want
    assert errors[0] > 0 and errors[-1] == 0


def test_best_reward_below_and_terminal_examples():
    texts, best, pids = best_reward_below(_nodes())
    assert dict(zip(texts, best)) == {"Qa": 1.0, "Qb": 0.0, "Qac": 1.0, "Qad": 0.0, "Qbf": 0.0, "Qbfg": 0.0}
    assert set(pids) == {"p"}
    texts, labels, _ = terminal_examples(_nodes())
    assert dict(zip(texts, labels)) == {"Qac": 1.0, "Qad": 0.0, "Qbfg": 0.0}


def test_step_preference_pairs_from_sibling_values():
    import dataclasses

    import pytest

    from rl.labels import step_preference_pairs
    values = {1: 0.9, 2: 0.2, 3: 1.0, 4: 0.0, 5: 0.5, 6: 0.45, 7: 0.0}
    nodes = [dataclasses.replace(n, value=values[n.node]) for n in _nodes()]
    pairs = step_preference_pairs(nodes, min_gap=0.5)
    # root's children a (0.9) > b (0.2); under a: c (1.0) > d (0.0); e/f differ by 0.05 only
    assert sorted(pairs) == [("Q", "a", "b"), ("Qa", "c", "d")]
    unvisited = [dataclasses.replace(n, visits=0) if n.node == 2 else n for n in nodes]
    assert ("Q", "a", "b") not in step_preference_pairs(unvisited, min_gap=0.5)
    with pytest.raises(ValueError, match="dpo_min_gap"):
        step_preference_pairs(nodes, min_gap=0.0)


def test_dpo_loss_and_sequence_logprobs_on_hand_numbers():
    import torch

    from rl.losses import IGNORE, dpo_loss, sequence_logprobs
    # equal log-ratios: margin 0, loss log 2
    z = torch.zeros(2)
    assert torch.isclose(dpo_loss(z, z, z, z, beta=0.1), torch.log(torch.tensor(2.0)))
    # chosen up by 1 nat against the reference, rejected down by 1: margin 2, beta 0.5 -> -log sigmoid(1)
    loss = dpo_loss(torch.tensor([1.0]), torch.tensor([-1.0]), torch.tensor([0.0]), torch.tensor([0.0]), beta=0.5)
    assert torch.isclose(loss, -torch.nn.functional.logsigmoid(torch.tensor(1.0)))
    # uniform logits over 4 tokens: every labelled position adds log(1/4); prompt positions are skipped
    logits = torch.zeros(1, 4, 4)
    labels = torch.tensor([[IGNORE, IGNORE, 2, 3]])
    assert torch.isclose(sequence_logprobs(logits, labels), torch.tensor([2 * torch.log(torch.tensor(0.25))])).all()
