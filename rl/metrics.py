"""Calibration and ranking metrics of critics against 0/1 labels: plain numpy, no warnings.

Degenerate inputs give defined values rather than numpy warnings: a metric logged every step
must not flood the log or turn into a silent nan where a number is expected (see each docstring).
"""
from __future__ import annotations

import numpy as np


def _check(probs, labels, *, probs_in_unit: bool) -> tuple[np.ndarray, np.ndarray]:
    """probs as float [n], labels as bool [n]; ValueError on empty, mismatched, nan or non-0/1 input."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if p.ndim != 1 or p.shape != y.shape or p.size == 0:
        raise ValueError(f"need two non-empty 1-d arrays of the same length, got shapes {p.shape} and {y.shape}")
    if np.isnan(p).any():
        raise ValueError("scores contain nan")
    if probs_in_unit and ((p < 0) | (p > 1)).any():
        raise ValueError(f"probabilities must be in [0, 1], got min {p.min()} max {p.max()}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    return p, y.astype(bool)


def expected_calibration_error(probs, labels, *, bins: int = 10) -> float:
    """ECE = sum_b (n_b / n) * |accuracy_b - confidence_b| over equal-width bins (Guo et al. 2017).

    probs are the predicted probabilities of label 1 (a critic's P(correct)), so accuracy_b is
    the fraction of 1 labels in bin b and confidence_b the mean probability there. Bins are
    [k/bins, (k+1)/bins), the last one closed at 1; Guo et al. close bins on the right
    instead, which differs only for probabilities exactly on an inner edge. Empty bins add 0.

    Args:
        probs: [n] in [0, 1].
        labels: [n] 0/1.
        bins: number of bins (>= 1).
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    p, y = _check(probs, labels, probs_in_unit=True)
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)            # [n] bin of each sample; p = 1 joins the last
    conf_sum = np.bincount(idx, weights=p, minlength=bins)             # [bins]
    acc_sum = np.bincount(idx, weights=y.astype(np.float64), minlength=bins)
    # sum_b (n_b/n) |acc_b - conf_b| = sum_b |acc_sum_b - conf_sum_b| / n: no division by empty bins
    return float(np.abs(acc_sum - conf_sum).sum() / p.size)


def precision_recall(probs, labels, *, threshold: float = 0.5) -> tuple[float, float]:
    """Precision and recall of the prediction `probs >= threshold` against labels.

    When nothing is predicted positive, precision is 0.0 (as scikit-learn's zero_division
    default gives, minus its warning): a critic that never accepts anything earns no credit.
    When there are no positive labels, recall is 0.0 likewise.

    Args:
        probs: [n] scores (any range; compared with threshold).
        labels: [n] 0/1.
    Returns:
        (precision, recall).
    """
    p, y = _check(probs, labels, probs_in_unit=False)
    pred = p >= threshold
    tp = int((pred & y).sum())
    predicted, positives = int(pred.sum()), int(y.sum())
    precision = tp / predicted if predicted else 0.0
    recall = tp / positives if positives else 0.0
    return float(precision), float(recall)


def binary_auc(scores, labels) -> float:
    """ROC AUC as the Mann-Whitney statistic: P(score of a positive > score of a negative), ties half.

    Computed from average ranks: AUC = (sum of positive ranks - P(P+1)/2) / (P * N).
    Returns nan (without a warning) when labels hold only one class, where AUC is undefined.

    Args:
        scores: [n] any real scores.
        labels: [n] 0/1.
    """
    s, y = _check(scores, labels, probs_in_unit=False)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    last = np.cumsum(counts).astype(np.float64)       # [u] 1-based rank of each distinct score's last copy
    avg_rank = last - (counts - 1) / 2.0              # [u] mean rank over the tied copies
    ranks = avg_rank[inverse.reshape(-1)]             # [n]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def within_problem_auc(scores, labels, groups) -> tuple[float, int]:
    """Mean over groups (problems) of binary_auc within the group, over the groups holding both classes,
    and how many such groups there are: (nan, 0) when none does.

    This is what a search needs from a critic: to rank one problem's right candidates above its wrong
    ones. Pooled AUC also rewards telling easy problems from hard ones, which a search cannot use.

    Args:
        scores: [n] any real scores.
        labels: [n] 0/1 (targets >= 0.5 count as 1).
        groups: [n] hashable problem ids.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = (np.asarray(labels, dtype=np.float64).reshape(-1) >= 0.5).astype(np.float64)
    g = list(groups)
    if not (s.size == y.size == len(g)):
        raise ValueError(f"within_problem_auc: {s.size} scores, {y.size} labels and {len(g)} groups")
    by: dict = {}
    for i, key in enumerate(g):
        by.setdefault(key, []).append(i)
    aucs = [binary_auc(s[idx], y[idx]) for idx in by.values() if 0 < y[idx].sum() < len(idx)]
    return (float(np.mean(aucs)) if aucs else float("nan")), len(aucs)


def calibration_error(probs, targets, *, bins: int = 10) -> float:
    """ECE against targets in [0, 1]: sum_b (n_b / n) * |mean target_b - mean prob_b| over equal-width
    bins of the predicted probability. With 0/1 targets this is expected_calibration_error; with soft
    targets (a Monte Carlo success fraction, a soft Math-Shepherd label) it asks the same question of the
    expected outcome instead of a rounded one."""
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    if p.ndim != 1 or p.shape != t.shape or p.size == 0:
        raise ValueError(f"need two non-empty 1-d arrays of the same length, got {p.shape} and {t.shape}")
    which = np.minimum((p * bins).astype(int), bins - 1)   # [n] bin of each prediction
    err = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            err += m.sum() / p.size * abs(t[m].mean() - p[m].mean())
    return float(err)


def fit_temperature(logits, targets, *, lo: float = 0.05, hi: float = 20.0, iters: int = 60) -> float:
    """Temperature scaling (Guo et al. 2017): the T minimising mean BCE(sigmoid(logit / T), target).

    The loss is unimodal in log T for a fixed set of logits; golden-section search over [lo, hi].
    """
    z = np.asarray(logits, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    if z.size == 0:
        raise ValueError("fit_temperature needs at least one example")

    def loss(log_temp: float) -> float:
        q = np.clip(1.0 / (1.0 + np.exp(-z / np.exp(log_temp))), 1e-7, 1 - 1e-7)
        return float(-np.mean(t * np.log(q) + (1 - t) * np.log(1 - q)))

    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    for _ in range(iters):
        if loss(c) < loss(d):
            b, d = d, c
            c = b - g * (b - a)
        else:
            a, c = c, d
            d = a + g * (b - a)
    return float(np.exp((a + b) / 2))


def critic_report(name: str, probs, targets) -> dict[str, float]:
    """Held-out metrics of one critic against its ground truth, under `critic/{name}_...`.

    targets may be soft (Monte Carlo fractions, soft PRM labels): the loss is binary cross-entropy and
    the ECE is calibration_error against them as given; precision, recall and AUC use them binarised
    at 0.5.
    """
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    t = np.asarray(targets, dtype=np.float64)
    if p.shape != t.shape or p.size == 0:
        raise ValueError(f"critic {name}: need as many scores as targets (> 0), got {p.shape} and {t.shape}")
    y = (t >= 0.5).astype(np.float64)
    precision, recall = precision_recall(p, y)
    return {f"critic/{name}_loss": float(-np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))),
            f"critic/{name}_precision": precision, f"critic/{name}_recall": recall,
            f"critic/{name}_ece": calibration_error(p, t), f"critic/{name}_auc": binary_auc(p, y),
            f"critic/{name}_heldout": float(p.size)}
