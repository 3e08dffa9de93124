"""MCTS over reasoning steps (AlphaLLM's option-level MCTS, in its plainest form).

A node is a step that ends at a newline. Each simulation selects down the tree
by UCT, expands the first unexpanded node it meets by sampling `branching`
candidate steps from the policy, scores that node with the value critic (or, at
a terminal node, with the reward), and backs the score up to the root.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from rl.search.tree import Tree, backup, uct_select
from rl.search.types import Budget, Models, SearchResult, Spent
from rl.tasks.base import Problem, Task


@dataclass(frozen=True)
class MCTS:
    simulations: int = 16
    branching: int = 3
    c_uct: float = 1.0
    max_depth: int = 8
    temperature: float = 1.0
    step_max_tokens: int = 24
    final: Literal["visits", "value"] = "visits"

    def __call__(self, problem: Problem, task: Task, models: Models, budget: Budget,
                 rng: np.random.Generator) -> SearchResult:
        t0 = time.perf_counter()
        tree = Tree(task.prompt(problem))
        spent = Spent()
        for _ in range(self.simulations):
            if budget.max_tokens and spent.generated_tokens >= budget.max_tokens:
                break
            node = 0
            while tree.expanded[node] and tree.children[node]:
                node = uct_select(tree, node, c=self.c_uct)
            if tree.terminal[node]:
                score = self._terminal_score(tree, node, problem, models, spent)
            else:
                self._expand(tree, node, task, models, spent, rng)
                score = self._evaluate(tree, node, models, spent)
            backup(tree, node, score)
        chosen = self._choose(tree)
        solution = tree.steps(chosen)
        if not tree.terminal[chosen]:  # the chosen path stops short of an answer: finish it greedily
            done = models.policy.complete([tree.state(chosen)], max_new_tokens=self.step_max_tokens * self.max_depth)[0]
            spent.generated_tokens += done.num_tokens
            solution += done.text
        spent.seconds = time.perf_counter() - t0
        return SearchResult(answer=task.extract_answer(solution), solution=solution, tree=tree,
                            chosen=chosen, spent=spent)

    def _expand(self, tree: Tree, node: int, task: Task, models: Models, spent: Spent,
                rng: np.random.Generator) -> None:
        samples = models.policy.sample_steps([tree.state(node)], self.branching, temperature=self.temperature,
                                             max_new_tokens=self.step_max_tokens,
                                             seed=int(rng.integers(2**31)))[0]
        seen = {tree.text[c] for c in tree.children[node]}
        for s in samples:
            spent.generated_tokens += s.num_tokens
            if s.text in seen:  # identical sibling: merged (no new node)
                continue
            seen.add(s.text)
            ended = task.is_terminal(s.text) or not s.text.endswith("\n")
            child = tree.add_child(node, s.text, logprob=s.logprob, terminal=ended)
            if not ended and tree.depth[child] >= self.max_depth:
                tree.terminal[child] = True  # out of steps: no answer, the reward scores it 0
        tree.expanded[node] = True

    def _evaluate(self, tree: Tree, node: int, models: Models, spent: Spent) -> float:
        if models.value is None:
            raise ValueError("MCTS needs a value critic to score non-terminal leaves")
        score = float(models.value.score([tree.state(node)])[0])
        spent.critic_calls += 1
        tree.evaluation[node] = score
        return score

    def _terminal_score(self, tree: Tree, node: int, problem: Problem, models: Models, spent: Spent) -> float:
        if np.isnan(tree.evaluation[node]):
            if models.reward is not None:
                tree.reward[node] = models.reward(problem, tree.steps(node))
                tree.evaluation[node] = tree.reward[node]
            else:
                self._evaluate(tree, node, models, spent)
        return float(tree.evaluation[node])

    def _choose(self, tree: Tree) -> int:
        """The leaf of the final answer: most-visited path, or best-scored terminal node."""
        if self.final == "value":
            term = [i for i in range(tree.size) if tree.terminal[i] and not np.isnan(tree.evaluation[i])]
            if term:
                return max(term, key=lambda i: (tree.evaluation[i], tree.visits[i]))
        node = 0
        while tree.children[node]:
            node = max(tree.children[node], key=lambda k: (tree.visits[k], tree.q(k)))
            if tree.visits[node] == 0:
                break
        return node
