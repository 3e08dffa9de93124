"""Label functions (rl/labels.py) and calibration metrics (rl/metrics.py) on hand-built inputs.

Fitted Q-iteration runs on a deterministic tree MDP, gamma = 0.9, terminal state T:
    s0 --a (r=0)--> s1 --a (r=0.8)--> T
                        --b (r=0)---> s3 --a (r=1)---> T
                                          --b (r=0.2)-> T
       --b (r=0)--> s2 --a (r=0.5)--> T
                        --b (r=0)---> T
Optimal Q (Bellman optimality, backwards from T):
    Q(s3,a)=1, Q(s3,b)=0.2; Q(s2,a)=0.5, Q(s2,b)=0
    Q(s1,a)=0.8, Q(s1,b)=0.9*max(1, 0.2)=0.9; Q(s0,a)=0.9*max(0.8, 0.9)=0.81, Q(s0,b)=0.9*0.5=0.45
FQI from Q_0 = 0 with a tabular fit (Q_{k+1} = y_k), 8 transitions:
    y_0 = r                           error_0 = (0.8^2 + 0.5^2 + 1^2 + 0.2^2) / 8 = 1.93 / 8
    y_1: (s0,a)=0.72 (s0,b)=0.45 (s1,b)=0.9, rest as y_0
                                      error_1 = (0.72^2 + 0.45^2 + 0.9^2) / 8 = 1.5309 / 8
    y_2: (s0,a)=0.81, rest as y_1     error_2 = 0.09^2 / 8 = 0.0081 / 8
    y_3 = y_2: the fixed point        error_3 = error_4 = 0
"""
import numpy as np
import pytest

from rl.labels import (Transition, best_rollout_q, dpo_pairs, fitted_q_iteration, fqi_targets, math_shepherd_labels,
                       orm_labels, stronger_policy_q)
from rl.metrics import binary_auc, expected_calibration_error, precision_recall
from rl.search import Tree, backup

# ---------------------------------------------------------------- process and outcome labels


def test_math_shepherd_hard_and_soft_labels():
    hard, soft = math_shepherd_labels([[1, 0, 1, 1], [0, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(hard, [1.0, 1.0, 0.0])
    np.testing.assert_array_equal(soft, [0.75, 0.25, 0.0])
    hard, soft = math_shepherd_labels([[1], [1.0, 0.0]])   # N may differ between steps
    np.testing.assert_array_equal(hard, [1.0, 1.0])
    np.testing.assert_array_equal(soft, [1.0, 0.5])


@pytest.mark.parametrize("rows", [[[1, 0.5]], [[1], []], [[np.nan]]])
def test_math_shepherd_rejects_non_binary_or_empty(rows):
    with pytest.raises(ValueError):
        math_shepherd_labels(rows)


def test_orm_labels_accept_rewards_and_bools():
    np.testing.assert_array_equal(orm_labels([1.0, 0.0, 1.0]), [1.0, 0.0, 1.0])
    out = orm_labels([True, False])
    assert out.dtype == np.float64 and out.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("bad", [[1.0, 0.5], [2.0], [np.nan], [-1.0]])
def test_orm_labels_reject_values_outside_0_1(bad):
    with pytest.raises(ValueError, match="0 or 1"):
        orm_labels(bad)


# ---------------------------------------------------------------- Q* labels


def test_fqi_targets_by_hand():
    y = fqi_targets(rewards=[0.0, 1.0, 0.5, 0.0, 0.25],
                    next_q_target=[np.array([0.2, 0.7]),   # 0 + 0.9 * 0.7
                                   np.array([0.9]),        # terminal: candidates ignored -> 1
                                   np.array([]),           # no candidates -> 0.5 + 0
                                   [-1.0, -2.0],           # max of negatives -> 0.9 * -1
                                   []],                    # terminal and empty -> 0.25
                    done=[False, True, False, False, True], gamma=0.9)
    np.testing.assert_allclose(y, [0.63, 1.0, 0.5, -0.9, 0.25], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(fqi_targets([0.3, 1.0], [[5.0], [5.0]], [False, False], gamma=0.0), [0.3, 1.0])


def test_fqi_targets_reject_bad_inputs():
    with pytest.raises(ValueError, match="same length"):
        fqi_targets([0.0, 1.0], [[1.0]], [False, False], gamma=0.9)
    with pytest.raises(ValueError, match="gamma"):
        fqi_targets([0.0], [[1.0]], [False], gamma=1.5)


GAMMA = 0.9
MDP = [
    Transition("s0", "a", 0.0, "s1", ("a", "b")),
    Transition("s0", "b", 0.0, "s2", ("a", "b")),
    Transition("s1", "a", 0.8, "T", done=True),
    Transition("s1", "b", 0.0, "s3", ("a", "b")),
    Transition("s2", "a", 0.5, "T", done=True),
    Transition("s2", "b", 0.0, "T", done=True),
    Transition("s3", "a", 1.0, "T", done=True),
    Transition("s3", "b", 0.2, "T", done=True),
]
Q_STAR = {("s0", "a"): 0.81, ("s0", "b"): 0.45, ("s1", "a"): 0.8, ("s1", "b"): 0.9,
          ("s2", "a"): 0.5, ("s2", "b"): 0.0, ("s3", "a"): 1.0, ("s3", "b"): 0.2}


def tabular_fit(states, actions, targets):
    """Replace each visited table entry with its target (exact fit)."""
    return {(s, a): float(y) for s, a, y in zip(states, actions, targets)}


def test_tabular_fqi_reaches_optimal_q():
    q, errors = fitted_q_iteration(MDP, {}, gamma=GAMMA, iterations=5, fit=tabular_fit)
    assert q.keys() == Q_STAR.keys()
    for key, value in Q_STAR.items():
        assert q[key] == pytest.approx(value, abs=1e-9), key
    np.testing.assert_allclose(errors, [1.93 / 8, 1.5309 / 8, 0.0081 / 8, 0.0, 0.0], rtol=0, atol=1e-12)
    assert np.all(np.diff(errors) <= 0)
    assert errors[-1] == 0.0
    # the result is a fixed point: one more target computation changes nothing
    again = fqi_targets([t.reward for t in MDP],
                        [[q[(t.next_state, a)] for a in t.next_actions] for t in MDP],
                        [t.done for t in MDP], gamma=GAMMA)
    np.testing.assert_allclose(again, [q[(t.state, t.action)] for t in MDP], rtol=0, atol=1e-12)


def test_fqi_with_a_callable_q_and_an_in_place_fit():
    """A callable Q works; a fit that edits its table in place does not move the current targets."""
    table = {}

    def q0(s, a):
        return table.get((s, a), 0.0)

    def fit(states, actions, targets):
        assert states == [t.state for t in MDP] and actions == [t.action for t in MDP]
        for s, a, y in zip(states, actions, targets):
            table[(s, a)] = float(y)
        return q0

    q, errors = fitted_q_iteration(MDP, q0, gamma=GAMMA, iterations=4, fit=fit)
    assert q is q0
    for (s, a), value in Q_STAR.items():
        assert q(s, a) == pytest.approx(value, abs=1e-9)
    assert errors[-1] == 0.0 and np.all(np.diff(errors) <= 0)
    with pytest.raises(ValueError):
        fitted_q_iteration(MDP, {}, gamma=GAMMA, iterations=0, fit=fit)


def test_rollout_and_stronger_policy_q_labels():
    np.testing.assert_array_equal(best_rollout_q([[0.0, 1.0, 0.0], [0.0, 0.0], [0.25]]), [1.0, 0.0, 0.25])
    np.testing.assert_array_equal(stronger_policy_q([[1.0], [0.0], [1.0, 0.0, 0.0, 1.0]]), [1.0, 0.0, 0.5])
    with pytest.raises(ValueError):
        best_rollout_q([[1.0], []])
    with pytest.raises(ValueError):
        stronger_policy_q([[np.nan]])


# ---------------------------------------------------------------- step preference pairs


def test_dpo_pairs_only_siblings_with_enough_gap():
    """Tree (node: backed-up value; values are exact binary fractions so the >= test is exact):
        0 root
        |- 1 (0.5)  |- 4 (0.0)   |- 5 (1.0)   |- 7 unvisited
        |- 2 (0.25) |- 6 (0.25)  |- 8 (0.25)
        |- 3 unvisited
    """
    t = Tree("p")
    n1, n2, n3 = t.add_child(0, "a"), t.add_child(0, "b"), t.add_child(0, "c")
    n4, n5 = t.add_child(n1, "d"), t.add_child(n1, "e")
    n6 = t.add_child(n2, "f")
    n7 = t.add_child(n1, "g")
    n8 = t.add_child(n2, "h")
    backup(t, n4, 0.0)
    backup(t, n5, 1.0)
    backup(t, n6, 0.25)
    backup(t, n8, 0.25)
    assert [t.q(i) for i in range(1, 9)] == [0.5, 0.25, 0.0, 0.0, 1.0, 0.25, 0.0, 0.25]
    assert t.visits[n3] == 0 and t.visits[n7] == 0

    # (1, 2) has a gap of exactly 0.25; 5 beats 4 though added after it; 6 and 8 tie;
    # cousins (5 vs 6) and unvisited nodes (3 at 0.0 vs 1 at 0.5) never pair
    assert dpo_pairs(t, min_gap=0.25) == [(n1, n2), (n5, n4)]
    assert dpo_pairs(t, min_gap=0.5) == [(n5, n4)]
    assert dpo_pairs(t, min_gap=2.0) == []
    with pytest.raises(ValueError):
        dpo_pairs(t, min_gap=0.0)


# ---------------------------------------------------------------- metrics


def test_ece_is_zero_when_calibrated():
    probs = [0.25] * 4 + [0.75] * 4 + [1.0, 1.0]
    labels = [1, 0, 0, 0] + [1, 1, 0, 1] + [1, 1]
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_ece_two_bins_by_hand():
    # bin [0, 0.5): probs 0.2, 0.4 -> confidence 0.3, accuracy 0.5, |diff| 0.2, weight 2/4
    # bin [0.5, 1]: probs 0.6, 0.9 -> confidence 0.75, accuracy 1.0, |diff| 0.25, weight 2/4
    ece = expected_calibration_error([0.2, 0.4, 0.6, 0.9], [0, 1, 1, 1], bins=2)
    assert ece == pytest.approx(0.5 * 0.2 + 0.5 * 0.25, abs=1e-12)
    # one bin: |mean label - mean prob| = |0.75 - 0.525|
    assert expected_calibration_error([0.2, 0.4, 0.6, 0.9], [0, 1, 1, 1], bins=1) == pytest.approx(0.225, abs=1e-12)
    with pytest.raises(ValueError):
        expected_calibration_error([1.2], [1])


@pytest.mark.filterwarnings("error")
def test_precision_recall_by_hand():
    probs, labels = [0.9, 0.6, 0.4, 0.2, 0.5], [1, 0, 1, 0, 1]
    # >= 0.5 predicts 0.9, 0.6, 0.5: two right of three; finds two of three positives
    assert precision_recall(probs, labels) == pytest.approx((2 / 3, 2 / 3))
    # >= 0.55 predicts 0.9, 0.6: one of two; one of three positives
    assert precision_recall(probs, labels, threshold=0.55) == pytest.approx((0.5, 1 / 3))
    assert precision_recall(probs, labels, threshold=0.95) == (0.0, 0.0)   # nothing predicted positive
    assert precision_recall([0.9, 0.1], [0, 0]) == (0.0, 0.0)             # no positive labels


@pytest.mark.filterwarnings("error")
def test_auc_by_hand_with_ties():
    assert binary_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # positives {0.5, 0.9}, negatives {0.5, 0.2}: pairs 0.5 (tie) + 1 + 1 + 1 = 3.5 of 4
    assert binary_auc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == pytest.approx(0.875)
    assert binary_auc([0.3, 0.3, 0.3], [1, 0, 1]) == pytest.approx(0.5)
    assert binary_auc([0.9, 0.1], [0, 1]) == 0.0
    assert np.isnan(binary_auc([0.2, 0.7], [1, 1]))                        # one class: undefined


def test_auc_matches_pair_counting():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=40) / 4.0   # few distinct values: many ties
    labels = rng.integers(0, 2, size=40)
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    expected = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
    assert binary_auc(scores, labels) == pytest.approx(expected, abs=1e-12)


def test_temperature_scaling_recovers_a_known_temperature_and_soft_ece():
    from rl.metrics import calibration_error, fit_temperature
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 2.0, 20000)                                   # calibrated logits
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(float)
    assert abs(fit_temperature(3.0 * z, y) - 3.0) < 0.15              # overconfident by 3x: T = 3
    assert abs(fit_temperature(z, y) - 1.0) < 0.05
    # soft targets: predictions equal to the expected outcome in every bin have no calibration error
    p = np.array([0.05, 0.15, 0.95]); t = np.array([0.05, 0.15, 0.95])
    assert calibration_error(p, t) == 0.0
    assert calibration_error(np.array([0.8, 0.8]), np.array([1.0, 0.0])) == pytest.approx(0.3)
