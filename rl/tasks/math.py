"""MATH (Hendrycks et al. 2021): competition problems with LaTeX solutions, read from JSONL.

Each line is a record with (by default; task.math.*_field renames them) "problem", "solution" (ending in a
\\boxed{} answer), "answer", "level" and "subject", as in MATH-500:

    {"problem": "Convert the point $(0,3)$ ...", "solution": "We have that $r = ...$ ... $\\boxed{...}$",
     "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "subject": "Precalculus", "level": 2, ...}

The final answer of a solution is its last \\boxed{...} (braces matched); the reward is 1.0 when math-verify finds
it equal to the gold answer (rl/grading/math.py, a time limit per comparison). Steps are paragraphs that hold a
formula (task.termination: latex_formula_paragraph, AlphaLLM's rule for MATH). Level and subject stay in
`MathTask.meta`, by problem id. The prompt is "Q: <problem on one line>\\n": the critics split a state's prompt
from its steps at its first newline, and LaTeX reads a newline as a space.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rl.config import MathConfig
from rl.grading.math import gold_answer, last_boxed, math_equal
from rl.tasks.arithmetic import split_of
from rl.tasks.base import Problem
from rl.tasks.termination import LatexFormulaParagraphStep, Termination


@dataclass(frozen=True)
class MathMeta:
    level: str = ""     # "1".."5" in MATH ("Level 3" in Hendrycks' files, kept as written)
    subject: str = ""   # "Algebra", "Precalculus", ...


def load_math(path: str | Path, cfg: MathConfig) -> tuple[list[Problem], dict[str, MathMeta]]:
    """Problems of a MATH JSONL file, in file order, and their level and subject by id.

    Raises:
        ValueError: naming file:line for a line that is not a JSON object, lacks a configured field (or holds a
            non-string problem, solution or answer), has no answer (no answer field and no \\boxed{} in the
            solution), or repeats an earlier problem; naming the file when it is missing or empty.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such MATH file (task.math.path, train_path or eval_path)")
    problems: list[Problem] = []
    meta: dict[str, MathMeta] = {}
    first_line: dict[str, int] = {}
    fields = [("problem_field", cfg.problem_field), ("solution_field", cfg.solution_field),
              ("answer_field", cfg.answer_field), ("level_field", cfg.level_field),
              ("subject_field", cfg.subject_field)]
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: a MATH record must be a JSON object")
        for key, name in fields:
            if name and name not in rec:
                raise ValueError(f"{where}: no field {name!r} (task.math.{key})")
        for key, name in fields[:3]:
            if name and not isinstance(rec[name], str):
                raise ValueError(f"{where}: field {name!r} (task.math.{key}) must be a string")
        question, solution = rec[cfg.problem_field].strip(), rec[cfg.solution_field]
        answer = rec[cfg.answer_field].strip() if cfg.answer_field else last_boxed(solution)
        if not answer:
            why = f"field {cfg.answer_field!r} is empty" if cfg.answer_field else "the solution has no \\boxed{}"
            raise ValueError(f"{where}: no answer ({why})")
        if question in first_line:
            raise ValueError(f"{where}: repeats the problem of line {first_line[question]}")
        first_line[question] = lineno
        pid = f"math-{hashlib.sha1(question.encode()).hexdigest()[:12]}"
        problems.append(Problem(id=pid, question=question, answer=gold_answer(answer), solution=solution))
        meta[pid] = MathMeta(level=str(rec[cfg.level_field]) if cfg.level_field else "",
                             subject=str(rec[cfg.subject_field]) if cfg.subject_field else "")
    if not problems:
        raise ValueError(f"{path}: holds no problems")
    return problems, meta


@dataclass
class MathTask:
    cfg: MathConfig
    name: str = "math"
    termination: Termination = field(default_factory=LatexFormulaParagraphStep)

    def __post_init__(self) -> None:
        c = self.cfg
        # read once here, so a bad file stops the run before any work and the task travels to Ray actors whole
        if c.path and (c.train_path or c.eval_path):
            raise ValueError("task.math: give train_path and eval_path, or path (one file split by problem hash), "
                             "not both")
        if c.path:
            self.problems, self.meta = load_math(c.path, c)
            self.splits = {s: [p for p in self.problems if split_of(p.question) == s] for s in ("train", "eval")}
            return
        if not (c.train_path and c.eval_path):
            raise ValueError("task.math.train_path and task.math.eval_path are not both set: give the JSONL files "
                             "of MATH problems (or task.math.path, one file split by hash)")
        (train, m1), (ev, m2) = load_math(c.train_path, c), load_math(c.eval_path, c)
        shared = {p.id for p in train} & {p.id for p in ev}
        if shared:
            raise ValueError(f"task.math: {len(shared)} problems of {c.eval_path} are also in {c.train_path}")
        self.splits, self.problems, self.meta = {"train": train, "eval": ev}, train + ev, {**m1, **m2}

    # ---- Task protocol -------------------------------------------------------------
    def prompt(self, problem: Problem) -> str:
        return f"Q: {' '.join(problem.question.split())}\n"

    def is_terminal(self, step: str) -> bool:
        return last_boxed(step) is not None

    def extract_answer(self, solution: str) -> str | None:
        return last_boxed(solution)

    def is_correct(self, problem: Problem, answer: str | None) -> bool:
        return math_equal(answer, problem.answer, timeout_s=self.cfg.timeout_s)

    def reward(self, problem: Problem, solution: str) -> float:
        """1.0 iff the solution's last \\boxed{} equals the gold answer by math-verify."""
        return float(self.is_correct(problem, self.extract_answer(solution)))

    def generate(self, n: int, seed: int, split: str = "train") -> list[Problem]:
        """n distinct problems of the split, in an order deterministic in seed."""
        if split not in self.splits:
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        pool = self.splits[split]
        if n > len(pool):
            where = self.cfg.path or (self.cfg.train_path if split == "train" else self.cfg.eval_path)
            raise ValueError(f"task.math: {where} holds {len(pool)} {split} problems, {n} were asked for "
                             "(lower bootstrap.examples, loop.prompts_per_round or loop.eval_size)")
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        return [pool[int(i)] for i in rng.choice(len(pool), size=n, replace=False)]
