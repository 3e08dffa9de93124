"""Scripted models for search tests: fixed steps, fixed values, no torch."""
from __future__ import annotations

import numpy as np

from rl.grading import extract_final_answer
from rl.models.policy import StepSample
from rl.tasks.base import Problem
from rl.tasks.termination import NewlineStep

TOY_PROMPT = "Q: x\n"
TOY_PROBLEM = Problem(id="toy", question="x", answer="1")


class ToyTask:
    """Every problem has the prompt TOY_PROMPT; answers are 'Answer: N' lines; right = the gold answer."""
    name = "toy"
    termination = NewlineStep()

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


class StreamPolicy:
    """Continues each state with fixed raw text, cut into a step as an engine cuts it: one token per character.

    streams[state] lists raw continuations (what an LM would write up to its EOS). A step runs to the
    first stop string where `termination.ends` (newline steps without a termination); the step is then
    `split(text)[0]`. A stream that runs out first ends at EOS; one longer than max_new_tokens is truncated.
    A state without a stream continues with `completion`. Records the termination of every call.
    """

    def __init__(self, streams: dict[str, list[str]], completion: str = "Answer: 0\n"):
        self.streams = streams
        self.completion = completion
        self.version = 0
        self.terminations: list[object] = []

    def sample_steps(self, prefixes, n, *, temperature=1.0, max_new_tokens=24, seed=None, termination=None):
        self.terminations.append(termination)
        term = termination or NewlineStep()
        return [[self._cut(raw, term, max_new_tokens) for raw in self.streams.get(p, [self.completion])[:n]]
                for p in prefixes]

    @staticmethod
    def _cut(raw: str, term, max_new_tokens: int) -> StepSample:
        stops = sorted({m + len(s) for s in term.stop_strings for m in range(len(raw)) if raw.startswith(s, m)})
        for end in stops:
            if end > max_new_tokens:
                break
            if term.ends(raw[:end]):
                return StepSample(term.split(raw[:end])[0], end, -1.0, True, complete=True)
        if len(raw) <= max_new_tokens:  # EOS
            return StepSample(raw, len(raw), -1.0, True, complete=False)
        return StepSample(raw[:max_new_tokens], max_new_tokens, -1.0, False, complete=False)

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
