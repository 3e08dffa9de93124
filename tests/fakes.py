"""Scripted models for search tests: fixed steps, fixed values, no torch."""
from __future__ import annotations

import numpy as np

from rl.grading import extract_final_answer
from rl.models.policy import StepSample
from rl.tasks.base import Problem

TOY_PROMPT = "Q: x\n"
TOY_PROBLEM = Problem(id="toy", question="x", answer="1")


class ToyTask:
    """Every problem has the prompt TOY_PROMPT; answers are 'Answer: N' lines; right = the gold answer."""
    name = "toy"

    def prompt(self, problem):
        return TOY_PROMPT

    def is_terminal(self, step):
        return step.startswith("Answer:")

    def extract_answer(self, solution):
        return extract_final_answer(solution)

    def is_correct(self, problem, answer):
        return answer == problem.answer

    def reward(self, problem, solution):
        return float(self.is_correct(problem, self.extract_answer(solution)))


class ScriptedPolicy:
    """Proposes the listed steps for each state, in order; each token is one character."""

    def __init__(self, steps: dict[str, list[str]], completion: str = "Answer: 0\n"):
        self.steps = steps
        self.completion = completion
        self.version = 0
        self.calls: list[str] = []

    def sample_steps(self, prefixes, n, *, temperature=1.0, max_new_tokens=24, seed=None):
        out = []
        for p in prefixes:
            self.calls.append(p)
            texts = self.steps.get(p, [self.completion])[:n]
            out.append([StepSample(text=t, num_tokens=len(t), logprob=-1.0, finished=True) for t in texts])
        return out

    def complete(self, prefixes, *, max_new_tokens=128, temperature=0.0, seed=None):
        return [StepSample(text=self.completion, num_tokens=len(self.completion), logprob=-1.0, finished=True)
                for _ in prefixes]


class TableCritic:
    """V(s) from a table; unknown states score `default`."""

    def __init__(self, values: dict[str, float], default: float = 0.0):
        self.values = values
        self.default = default
        self.version = 0

    def score(self, states):
        return np.array([self.values.get(s, self.default) for s in states], dtype=np.float64)
