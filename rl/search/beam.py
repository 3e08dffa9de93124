"""Step-level beam search scored by a process reward model (the PRM beam baseline of Q* / AlphaLLM).

At each depth every live beam is expanded with `expand` sampled steps (one batched
policy call for all beams), every new child is scored by the PRM on prompt + steps
(one batched critic call), and the `beam_width` best non-terminal children become the
next beams. Terminal children (an answer step, or a step that the task's termination did not end)
are set aside as candidates and take no beam slot, so the beam keeps its full width
while finished solutions accumulate. The answer is the highest-scored candidate; with
none, the best live beam is completed greedily.

Budget (the rule of every search, rl/search/types.py Budget): no depth's expansion starts once
spent.generated_tokens >= budget.max_tokens (0 = no cap); a call that starts under the cap runs
to the end; the first expansion always runs; without a finished candidate, the final greedy
completion of the best beam always runs, so there is always an answer.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from rl.search.sampling import critic_or_value, out_of_tokens, score_nodes
from rl.search.tree import Tree
from rl.search.types import (Budget, Models, SearchResult, Spent, check_fields, finish_greedily, sample_steps,
                             step_is_complete)
from rl.tasks.base import Problem, Task


def top_k(nodes: list[int], scores: np.ndarray, k: int) -> list[int]:
    """The k nodes with the highest scores, best first; ties go to the node created first."""
    order = np.argsort(-scores, kind="stable")
    return [nodes[i] for i in order[:k]]


@dataclass(frozen=True)
class StepBeam:
    """Step-level beam search: keep the beam_width best partial solutions by PRM score (fallback: value)."""
    beam_width: int = 4
    expand: int = 3               # steps sampled per live beam per depth
    max_depth: int = 8
    temperature: float = 1.0
    step_max_tokens: int = 24

    def __post_init__(self):
        check_fields(self, [("beam_width", self.beam_width >= 1, "must be >= 1"),
                            ("expand", self.expand >= 1, "must be >= 1"),
                            ("max_depth", self.max_depth >= 1, "must be >= 1"),
                            ("temperature", self.temperature >= 0, "must be >= 0"),
                            ("step_max_tokens", self.step_max_tokens >= 1, "must be >= 1")])

    def __call__(self, problem: Problem, task: Task, models: Models, budget: Budget,
                 rng: np.random.Generator) -> SearchResult:
        t0 = time.perf_counter()
        critic = critic_or_value(models, "prm", "StepBeam")  # before sampling: fail without spending tokens
        tree = Tree(task.prompt(problem))
        spent = Spent()
        beams, candidates = [0], []
        for _ in range(self.max_depth):
            if not beams or out_of_tokens(budget, spent):  # nothing spent before the first depth: it always runs
                break
            children = self._expand(tree, beams, task, models, spent, rng)
            scores = score_nodes(tree, children, critic, spent)
            candidates += [c for c in children if tree.terminal[c]]
            live = [i for i, c in enumerate(children) if not tree.terminal[c]]
            beams = top_k([children[i] for i in live], scores[live], self.beam_width)

        solution_tail = ""
        if candidates:
            chosen = top_k(candidates, tree.evaluation[candidates], 1)[0]
        else:
            # beams are best-first, so beams[0] is the best live beam (the root if nothing was kept)
            chosen = beams[0] if beams else 0
            solution_tail = finish_greedily(tree, chosen, models.policy, spent,
                                            max_new_tokens=self.step_max_tokens * self.max_depth)
        solution = tree.steps(chosen) + solution_tail
        spent.seconds = time.perf_counter() - t0
        return SearchResult(answer=task.extract_answer(solution), solution=solution, tree=tree,
                            chosen=chosen, spent=spent)

    def _expand(self, tree: Tree, beams: list[int], task: Task, models: Models, spent: Spent,
                rng: np.random.Generator) -> list[int]:
        """Sample `expand` steps under every beam in one call; add the distinct ones; return the new ids."""
        samples = sample_steps(models.policy, task, [tree.state(b) for b in beams], self.expand,
                               temperature=self.temperature, max_new_tokens=self.step_max_tokens,
                               seed=int(rng.integers(2**31)))
        new = []
        for b, steps in zip(beams, samples):
            seen = set()
            for s in steps:
                spent.generated_tokens += s.num_tokens
                if s.text in seen:  # identical sibling: one node, so it cannot fill two beam slots
                    continue
                seen.add(s.text)
                ended = task.is_terminal(s.text) or not step_is_complete(task, s)  # an answer, EOS or truncated
                new.append(tree.add_child(b, s.text, logprob=s.logprob, terminal=ended))
            tree.expanded[b] = True
        return new
