"""The embedded default task: multi-step integer arithmetic with an exact verifier.

A problem is an expression evaluated left to right, such as ``(3+5)*2-7``
(parentheses only where precedence would otherwise change the order). Each
solution step does the leftmost operation and rewrites what remains, so the
next step reads its operands from the line just above (a scratchpad a tiny
transformer learns quickly); the last line gives the answer:

    8*2-7
    16-7
    9
    Answer: 9

Train and eval problems are disjoint by construction: a problem belongs to the
eval split iff a hash of its question falls in the eval bucket, so any seed of
one split never yields a problem of the other.
"""
from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass, field

import numpy as np

from rl.config import ArithmeticConfig
from rl.grading import answers_equal, extract_final_answer
from rl.grading.answers import ANSWER_PREFIX
from rl.tasks.base import Problem, question_and_steps
from rl.tasks.termination import NewlineStep, Termination

EVAL_BUCKETS = 5  # one question hash bucket in five is held out for evaluation
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _digest(question: str) -> str:
    return hashlib.sha1(question.encode()).hexdigest()


def render(first: int, rest: list[tuple[str, int]]) -> str:
    """Expression text of `first` followed by (op, value) pairs applied left to right."""
    expr = str(first)
    for i, (op, v) in enumerate(rest):
        if op == "*" and any(o in "+-" for o, _ in rest[:i]):
            expr = f"({expr})"  # precedence would otherwise multiply first
        expr = f"{expr}{op}{v}"
    return expr


def split_of(question: str) -> str:
    """'eval' or 'train', from the question's hash alone."""
    return "eval" if int(_digest(question)[:8], 16) % EVAL_BUCKETS == 0 else "train"


@dataclass
class ArithmeticTask:
    cfg: ArithmeticConfig
    name: str = "arithmetic"
    termination: Termination = field(default_factory=NewlineStep)  # a step is one scratchpad line

    def __post_init__(self) -> None:
        c = self.cfg
        bad = set(c.operators) - set(_OPS)
        if bad or not c.operators:
            raise ValueError(f"task.arithmetic.operators = {c.operators!r}: use some of '+-*'")
        if not 2 <= c.min_operands <= c.max_operands:
            raise ValueError("task.arithmetic: need 2 <= min_operands <= max_operands")
        if not 0 <= c.min_value <= c.max_value <= c.max_result:
            raise ValueError("task.arithmetic: need 0 <= min_value <= max_value <= max_result")

    # ---- Task protocol -------------------------------------------------------------
    def prompt(self, problem: Problem) -> str:
        return f"Q: {problem.question}\n"

    def is_terminal(self, step: str) -> bool:
        return step.startswith(ANSWER_PREFIX)

    def extract_answer(self, solution: str) -> str | None:
        return extract_final_answer(solution)

    def is_correct(self, problem: Problem, answer: str | None) -> bool:
        return answers_equal(answer, problem.answer)

    def reward(self, problem: Problem, solution: str) -> float:
        """1.0 iff the final answer is right and the working leading to it is right.

        The working is right when every step is an expression of the gold value (each rewrite of
        the expression keeps its value) and the last step is the value itself. Checking the steps
        as well as the answer keeps "right answer, wrong working" out of the training data.
        """
        if not self.is_correct(problem, self.extract_answer(solution)):
            return 0.0
        gold = int(problem.answer)
        steps: list[str] = []
        for line in solution.split("\n"):
            if line.startswith(ANSWER_PREFIX):
                return float(bool(steps) and steps[-1] == str(gold))
            if evaluate_expression(line) != gold:
                return 0.0
            steps.append(line)
        return 0.0

    def step_utilities(self, state: str) -> list[float]:
        """The rule-based utility of each step of a state (prompt + steps): 1.0 or 0.0, read from the text alone.

        A step is right when it makes progress and keeps the value of the line above it (the question, for
        the first step): a rewrite is an expression of the same value with fewer operators; an answer step
        gives that value. No label is read, so a search may use this at evaluation time (Q*'s rule-based
        utility, rl.grading.RuleCritic). A line after a wrong one is judged against that wrong line, so
        each step's utility is its own, and `min` over a path says whether all of it is right.
        """
        above, steps = question_and_steps(state, "arithmetic")
        out = []
        for line in steps:
            value = evaluate_expression(above)
            if line.startswith(ANSWER_PREFIX):
                right = value is not None and extract_final_answer(line) == str(value)
            else:
                right = (value is not None and evaluate_expression(line) == value
                         and _operators(line) < _operators(above))
            out.append(float(right))
            above = line
        return out

    def generate(self, n: int, seed: int, split: str = "train") -> list[Problem]:
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        out: dict[str, Problem] = {}
        tries = 0
        while len(out) < n:
            tries += 1
            if tries > 200 * n + 1000:
                raise ValueError(f"task.arithmetic: cannot find {n} distinct {split} problems; widen the ranges")
            p = self._sample(rng)
            if p is not None and split_of(p.question) == split and p.question not in out:
                out[p.question] = p
        return list(out.values())

    # ---- generator -----------------------------------------------------------------
    def _sample(self, rng: np.random.Generator) -> Problem | None:
        c = self.cfg
        k = int(rng.integers(c.min_operands, c.max_operands + 1))
        values = [int(v) for v in rng.integers(c.min_value, c.max_value + 1, size=k)]
        ops = [c.operators[int(i)] for i in rng.integers(0, len(c.operators), size=k - 1)]
        rest = list(zip(ops, values[1:]))
        expr, acc, steps = render(values[0], rest), values[0], []
        for i, (op, v) in enumerate(rest):
            acc = _OPS[op](acc, v)
            if not 0 <= acc <= c.max_result:
                return None
            steps.append(render(acc, rest[i + 1:]))
        steps.append(f"{ANSWER_PREFIX} {acc}")
        return Problem(id=f"arith-{_digest(expr)[:12]}", question=expr, answer=str(acc),
                       solution="\n".join(steps) + "\n")


def _operators(expr: str) -> int:
    """Binary operators in an expression: a minus right after a digit or ")" (the task's values are >= 0)."""
    return len(re.findall(r"(?<=[0-9)])[+\-*]", expr))


_EXPR_RE = re.compile(r"^[0-9+\-*()]{1,64}$")


def evaluate_expression(text: str) -> int | None:
    """Value of an integer expression of + - * and parentheses, or None if it is not one."""
    if not _EXPR_RE.match(text) or "**" in text:  # no powers: 9**9**9 would never finish
        return None
    try:
        with warnings.catch_warnings():  # "(1)(2)" warns before it fails
            warnings.simplefilter("ignore")
            value = eval(text, {"__builtins__": {}}, {})  # noqa: S307 - the pattern leaves only integer arithmetic
    except (SyntaxError, TypeError, ValueError):
        return None  # includes leading zeros such as "07"
    return value if isinstance(value, int) else None


def verify_expression(question: str, answer: str) -> bool:
    """Check a gold answer against the evaluation of its expression (tests use this)."""
    value = evaluate_expression(question)
    if value is None:
        raise ValueError(f"not an arithmetic expression: {question!r}")
    return value == int(answer)
