"""One round of critic training on a learner rank: labels from the round's experience, then a fit per critic.

Runs where the records already are (the learner rank, which receives them from the replay actor as
object refs, not through the driver). Each critic trains on the training problems' labels; half of
the held-out problems' labels (rl.labels.is_heldout: stable splits by problem id) calibrate it by
temperature scaling folded into its head (learner.calibrate), and the other half report it: loss,
precision, recall, ECE and AUC under `critic/{name}_...`, the mean AUC within one problem over the report
problems with both outcomes (`critic/{name}_auc_within`, and how many: `..._auc_within_problems`), and the
fitted `critic/{name}_temperature`.

    V    Monte Carlo targets of the sampled replay records (rl.experience.value_examples), plus the
         verifier reward of each prompt's greedy solution (CriticExample kind "value")
    ORM  0/1 verifier reward of each complete solution the searches reached
    PRM  Math-Shepherd labels the rollout workers made (CriticExample kind "prm")
    Q    labels.q_source: fqi (fitted Q-iteration over the tree transitions, Learner.train_q_fqi),
         rollout (best reward reached below (s, a)), or stronger (CriticExample kind "q")
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from rl.config import LabelsConfig
from rl.experience import CriticExample, NodeExperience, value_examples
from rl.labels import best_reward_below, is_heldout, terminal_examples, tree_transitions
from rl.metrics import critic_report, fit_temperature, within_problem_auc

MIN_CALIBRATION = 50  # held-out examples needed to fit a temperature; fewer and the critic is left as trained

if TYPE_CHECKING:
    from learners.learner import Learner


def fit_and_report(learner: "Learner", name: str, texts: list[str], targets, problem_ids: list[str]) -> dict:
    """Train critic `name` on the training problems' (text, target) pairs, calibrate it on half of the
    held-out problems (learner.calibrate) and report it on the other half (all of them without calibration)."""
    frac = learner.cfg.holdout_frac
    held = np.array([is_heldout(p, frac) for p in problem_ids], dtype=bool)
    targets = np.asarray(targets, dtype=np.float64)
    if learner.is_generative(name):
        metrics = learner.train_verifier(name)
    else:
        metrics = learner.train_critic(name, [t for t, h in zip(texts, held) if not h], targets[~held])
    return {**metrics, **calibrate_and_report(learner, name, [t for t, h in zip(texts, held) if h], targets[held],
                                              [p for p, h in zip(problem_ids, held) if h])}


def calibrate_and_report(learner: "Learner", name: str, texts: list[str], targets: np.ndarray,
                         problem_ids: list[str]) -> dict:
    """Temperature scaling (Guo et al. 2017) of critic `name` on the held-out problems of one half (a
    second stable split by problem id), folded into its head; the report uses the other half only."""
    if not texts:
        return {}
    metrics = {}
    if learner.cfg.calibrate and not learner.is_generative(name):
        cal = np.array([is_heldout(p + "#calibration", 0.5) for p in problem_ids], dtype=bool)
        if cal.sum() >= MIN_CALIBRATION and (~cal).any():
            temp = fit_temperature(learner.critic_logits(name, [t for t, c in zip(texts, cal) if c]), targets[cal])
            learner.scale_head(name, 1.0 / temp)
            metrics[f"critic/{name}_temperature"] = temp
            texts, targets = [t for t, c in zip(texts, cal) if not c], targets[~cal]
            problem_ids = [p for p, c in zip(problem_ids, cal) if not c]
    scores = learner.critic_scores(name, texts)
    # ranking within one problem (what a search needs), over the report problems with both outcomes
    auc_within, n_within = within_problem_auc(scores, targets, problem_ids)
    return {**metrics, **critic_report(name, scores, targets), f"critic/{name}_auc_within": auc_within,
            f"critic/{name}_auc_within_problems": n_within}


def verified_solutions(nodes: list[NodeExperience], greedy: list[CriticExample], holdout_frac: float) -> list[str]:
    """Texts (prompt + steps) of the training problems' right solutions: terminals of reward 1 and greedy
    solutions of target 1; held-out problems are left out, so the report stays on unseen problems."""
    texts, rewards, pids = terminal_examples(nodes)
    texts = [t for t, y, p in zip(texts, rewards, pids) if y == 1.0 and not is_heldout(p, holdout_frac)]
    return texts + [e.text for e in greedy if e.target == 1.0 and not is_heldout(e.problem_id, holdout_frac)]


def drop_stale(records: list, version: int, max_staleness: int | None) -> tuple[list, int]:
    """Records made by a policy at most max_staleness versions behind `version` (None: all), and how many
    were dropped. Async mode: actors keep searching while the learner trains, so experience arrives
    from older weights."""
    if max_staleness is None:
        return records, 0
    kept = [r for r in records if version - r.policy_version <= max_staleness]
    return kept, len(records) - len(kept)


def train_critics(learner: "Learner", value_nodes: list[NodeExperience] | None, nodes: list[NodeExperience],
                  examples: list[CriticExample], labels: LabelsConfig, max_staleness: int | None = None) -> dict:
    """V on up to learner.value_samples of value_nodes (None: the round's nodes; drawn with the learner's seeded rng, the same
    draw on every rank), then every critic of learner.critics from this round's nodes and examples;
    records more than max_staleness versions old are dropped first (counted in async/dropped_*)."""
    cfg = learner.cfg
    staleness = np.array([learner.version - n.policy_version for n in nodes], dtype=np.float64)
    nodes, dropped_nodes = drop_stale(nodes, learner.version, max_staleness)
    value_nodes = nodes if value_nodes is None else value_nodes
    examples, dropped_examples = drop_stale(examples, learner.version, max_staleness)
    stale_metrics = {"async/dropped_nodes": dropped_nodes, "async/dropped_examples": dropped_examples,
                     "async/max_staleness": float(staleness.max(initial=0.0)),
                     "async/mean_staleness": float(staleness.mean()) if staleness.size else 0.0}
    keep = learner.rng.permutation(len(value_nodes))[:cfg.value_samples]
    sampled = [value_nodes[i] for i in keep if not np.isnan(value_nodes[i].value_target)]
    states, targets = value_examples(sampled)
    greedy = [e for e in examples if e.kind == "value"]
    kept = learner.add_verified(verified_solutions(nodes, greedy, cfg.holdout_frac))  # before any fit
    metrics = fit_and_report(learner, "value", states + [e.text for e in greedy],
                             np.concatenate([targets, [e.target for e in greedy]]),
                             [n.problem_id for n in sampled] + [e.problem_id for e in greedy])
    metrics["learner/value_examples_drawn"] = len(states)
    metrics["learner/verified_solutions"] = kept
    for name in cfg.critics:
        if name == "orm":
            metrics.update(fit_and_report(learner, "orm", *terminal_examples(nodes)))
        elif name == "prm" or (name == "q" and labels.q_source == "stronger"):
            ex = [e for e in examples if e.kind == name]
            metrics.update(fit_and_report(learner, name, [e.text for e in ex], [e.target for e in ex],
                                          [e.problem_id for e in ex]))
        elif name == "q" and labels.q_source == "rollout":
            metrics.update(fit_and_report(learner, "q", *best_reward_below(nodes)))
        elif name == "q":  # fitted Q-iteration on the training problems' transitions
            train = tree_transitions([n for n in nodes if not is_heldout(n.problem_id, cfg.holdout_frac)])
            metrics.update(learner.train_q_fqi(train, iterations=labels.fqi_iterations, gamma=labels.gamma))
            # held out: Q against the best reward the search reached below each (s, a)
            texts, truth, pids = best_reward_below([n for n in nodes if is_heldout(n.problem_id, cfg.holdout_frac)])
            metrics.update(calibrate_and_report(learner, "q", texts, truth, pids))
    return {**metrics, **stale_metrics}
