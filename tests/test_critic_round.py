"""learners/critic_round.calibrate_and_report with a fake learner: the held-out report's within-problem AUC."""
from dataclasses import dataclass

import numpy as np
import pytest

from learners.critic_round import MIN_CALIBRATION, calibrate_and_report
from rl.labels import is_heldout


@dataclass
class _Cfg:
    calibrate: bool = False
    holdout_frac: float = 0.2


class TableLearner:
    """The learner methods calibrate_and_report calls: a critic that scores text t as table[t]."""

    def __init__(self, table: dict[str, float], *, calibrate: bool = False):
        self.cfg = _Cfg(calibrate=calibrate)
        self.table = table
        self.scaled: list[float] = []

    def is_generative(self, name):
        return False  # a scalar-head critic: calibration scales its head

    def critic_scores(self, name, texts):
        return np.array([self.table[t] for t in texts])

    def critic_logits(self, name, texts):
        p = np.clip(self.critic_scores(name, texts), 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))

    def scale_head(self, name, factor):
        self.scaled.append(factor)


def test_within_problem_auc_averages_per_problem_and_skips_one_outcome_problems():
    # problem a ranks its right candidate first (AUC 1), b the wrong one first (AUC 0), c has only right ones
    rows = [("a1", "a", 0.9, 1.0), ("a2", "a", 0.2, 0.0), ("a3", "a", 0.1, 0.0),
            ("b1", "b", 0.3, 1.0), ("b2", "b", 0.4, 0.0),
            ("c1", "c", 0.8, 1.0), ("c2", "c", 0.7, 1.0)]
    learner = TableLearner({t: s for t, _, s, _ in rows})
    m = calibrate_and_report(learner, "prm", [r[0] for r in rows], np.array([r[3] for r in rows]),
                             [r[1] for r in rows])
    assert m["critic/prm_auc_within"] == pytest.approx(0.5)
    assert m["critic/prm_auc_within_problems"] == 2
    assert m["critic/prm_auc"] != pytest.approx(0.5)     # the pooled AUC is a different number
    assert m["critic/prm_heldout"] == len(rows)


def test_within_problem_auc_uses_the_report_half_after_calibration():
    # 40 problems of 4 candidates; the critic ranks perfectly on the report half and backwards on the
    # calibration half, so only the report half's problems may count
    pids = [f"p{i}" for i in range(40)]
    cal = {p: is_heldout(p + "#calibration", 0.5) for p in pids}
    assert sum(cal.values()) * 4 >= MIN_CALIBRATION and not all(cal.values())
    texts, targets, groups, table = [], [], [], {}
    for p in pids:
        for j, y in enumerate((1.0, 0.0, 1.0, 0.0)):
            t = f"{p}/{j}"
            right_high = 0.8 if y else 0.3
            table[t] = (1.0 - right_high) if cal[p] else right_high
            texts.append(t), targets.append(y), groups.append(p)
    learner = TableLearner(table, calibrate=True)
    m = calibrate_and_report(learner, "value", texts, np.array(targets), groups)
    assert learner.scaled                                   # the temperature was fitted on the calibration half
    assert m["critic/value_auc_within"] == pytest.approx(1.0)
    assert m["critic/value_auc_within_problems"] == sum(not c for c in cal.values())


def test_no_problem_with_both_outcomes_gives_nan_and_zero():
    learner = TableLearner({"x": 0.4, "y": 0.6})
    m = calibrate_and_report(learner, "orm", ["x", "y"], np.array([1.0, 1.0]), ["a", "b"])
    assert np.isnan(m["critic/orm_auc_within"]) and m["critic/orm_auc_within_problems"] == 0
