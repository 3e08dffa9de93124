"""Sample-and-select searches: N whole solutions from the policy, then one picked by vote or critic.

SelfConsistency, WeightedVote and BestOfN share one sampler, `draw_solutions`, and differ
only in how they pick. Their tree is the root plus one terminal child per sample, so the
samples can be exported and labelled like any other tree.

Budget: before each `policy.complete` call the sampler stops if spent.generated_tokens >=
budget.max_tokens (0 = no cap), the same check MCTS makes before each simulation. A call
that starts under the cap runs to the end, so the last batch may overshoot the cap; the
first batch is always drawn so every method has an answer to give.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from rl.search.tree import Tree
from rl.search.types import Budget, Models, SearchResult, Spent, check_fields
from rl.tasks.base import Problem, Task


def out_of_tokens(budget: Budget, spent: Spent) -> bool:
    """True once the token budget is used up; searches check it before every generation call."""
    return bool(budget.max_tokens) and spent.generated_tokens >= budget.max_tokens


def critic_or_value(models: Models, kind: str, method: str):
    """models.<kind> (e.g. "orm", "prm"), else models.value; ValueError naming both when neither is given."""
    critic = getattr(models, kind)
    if critic is None:
        critic = models.value
    if critic is None:
        raise ValueError(f"{method} needs a critic: models.{kind} is None and so is its fallback models.value")
    return critic


def score_nodes(tree: Tree, nodes: list[int], critic, spent: Spent) -> np.ndarray:
    """Score prompt + steps of each node in one batched call; store in tree.evaluation. Returns [len(nodes)]."""
    if not nodes:
        return np.zeros(0)
    scores = np.asarray(critic.score([tree.state(i) for i in nodes]), dtype=np.float64)
    spent.critic_calls += len(nodes)  # counted per text scored, as MCTS (one text per call) counts them
    tree.evaluation[nodes] = scores
    return scores


def majority_vote(answers: list[str | None], weights: np.ndarray | None = None) -> str | None:
    """The answer with the largest total weight (1 each by default); None answers do not vote.

    Ties go to the answer seen first. None when no sample has an answer.
    """
    totals: dict[str, float] = {}  # insertion order = first occurrence, which breaks ties
    for i, a in enumerate(answers):
        if a is not None:
            totals[a] = totals.get(a, 0.0) + (1.0 if weights is None else float(weights[i]))
    best, best_w = None, -np.inf
    for a, w in totals.items():
        if w > best_w:  # strict: a later answer needs more weight to win
            best, best_w = a, w
    return best


def draw_solutions(problem: Problem, task: Task, models: Models, budget: Budget, rng: np.random.Generator, *,
                   n: int, batch_size: int, temperature: float,
                   max_new_tokens: int) -> tuple[Tree, list[int], list[str | None], Spent]:
    """Up to n complete solutions, `batch_size` per policy call, stopping early at the token budget.

    Returns the tree (root + one terminal child per sample, in draw order), the child ids,
    each sample's extracted answer, and the spend so far (seconds not yet set).
    """
    tree = Tree(task.prompt(problem))
    spent = Spent()
    leaves: list[int] = []
    answers: list[str | None] = []
    while len(leaves) < n:
        if leaves and out_of_tokens(budget, spent):
            break
        k = min(batch_size, n - len(leaves))
        outs = models.policy.complete([tree.prompt] * k, max_new_tokens=max_new_tokens,
                                      temperature=temperature, seed=int(rng.integers(2**31)))
        for o in outs:
            spent.generated_tokens += o.num_tokens
            leaves.append(tree.add_child(0, o.text, logprob=o.logprob, terminal=True))
            answers.append(task.extract_answer(o.text))
    tree.expanded[0] = True
    return tree, leaves, answers, spent


def _result(tree: Tree, leaves: list[int], answers: list[str | None], pick: int, spent: Spent,
            t0: float) -> SearchResult:
    spent.seconds = time.perf_counter() - t0
    leaf = leaves[pick]
    return SearchResult(answer=answers[pick], solution=tree.text[leaf], tree=tree, chosen=leaf, spent=spent)


def _first_with(answers: list[str | None], answer: str | None) -> int:
    # When no sample has an answer the vote is None and the first sample stands in.
    return answers.index(answer) if answer is not None else 0


def _check_sampling(search) -> None:
    check_fields(search, [("n", search.n >= 1, "need at least one sample"),
                          ("batch_size", search.batch_size >= 1, "need at least one sample per call"),
                          ("temperature", search.temperature >= 0, "must be >= 0"),
                          ("max_new_tokens", search.max_new_tokens >= 1, "must be >= 1")])


def _draw(search, problem: Problem, task: Task, models: Models, budget: Budget, rng: np.random.Generator):
    """draw_solutions with the sampling hyperparameters (n, batch_size, temperature, max_new_tokens) of search."""
    return draw_solutions(problem, task, models, budget, rng, n=search.n, batch_size=search.batch_size,
                          temperature=search.temperature, max_new_tokens=search.max_new_tokens)


@dataclass(frozen=True)
class SelfConsistency:
    """Majority vote over the answers of N sampled solutions (self-consistency, Wang et al. 2022).

    chosen = the first sample carrying the voted answer (the first sample if none has an answer).
    """
    n: int = 8                    # samples per problem (fewer if the token budget runs out)
    batch_size: int = 4           # samples per policy call: larger is faster, smaller stops closer to the budget
    temperature: float = 1.0
    max_new_tokens: int = 192     # per sample

    def __post_init__(self):
        _check_sampling(self)

    def __call__(self, problem: Problem, task: Task, models: Models, budget: Budget,
                 rng: np.random.Generator) -> SearchResult:
        t0 = time.perf_counter()
        tree, leaves, answers, spent = _draw(self, problem, task, models, budget, rng)
        return _result(tree, leaves, answers, _first_with(answers, majority_vote(answers)), spent, t0)


@dataclass(frozen=True)
class WeightedVote:
    """Vote over N sampled solutions, each answer weighted by the ORM score of its solution.

    Verifier-weighted voting as in the AlphaLLM / Math-Shepherd baselines (ORM of Cobbe et al. 2021).
    Critic: models.orm on prompt + solution, falling back to models.value. Scores go to tree.evaluation.
    """
    n: int = 8
    batch_size: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 192

    def __post_init__(self):
        _check_sampling(self)

    def __call__(self, problem: Problem, task: Task, models: Models, budget: Budget,
                 rng: np.random.Generator) -> SearchResult:
        t0 = time.perf_counter()
        critic = critic_or_value(models, "orm", "WeightedVote")  # before sampling: fail without spending tokens
        tree, leaves, answers, spent = _draw(self, problem, task, models, budget, rng)
        scores = score_nodes(tree, leaves, critic, spent)
        return _result(tree, leaves, answers, _first_with(answers, majority_vote(answers, scores)), spent, t0)


@dataclass(frozen=True)
class BestOfN:
    """The one of N sampled solutions with the highest ORM score (best-of-N reranking, Cobbe et al. 2021).

    Critic: models.orm on prompt + solution, falling back to models.value. Ties go to the
    earlier sample; a sample without an answer can win if the critic ranks it first.
    """
    n: int = 8
    batch_size: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 192

    def __post_init__(self):
        _check_sampling(self)

    def __call__(self, problem: Problem, task: Task, models: Models, budget: Budget,
                 rng: np.random.Generator) -> SearchResult:
        t0 = time.perf_counter()
        critic = critic_or_value(models, "orm", "BestOfN")
        tree, leaves, answers, spent = _draw(self, problem, task, models, budget, rng)
        scores = score_nodes(tree, leaves, critic, spent)
        return _result(tree, leaves, answers, int(np.argmax(scores)), spent, t0)  # argmax: first of equals
