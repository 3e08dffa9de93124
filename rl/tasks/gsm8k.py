"""GSM8K (Cobbe et al. 2021): grade-school word problems with a numeric answer, read from a JSONL file.

Each line of the file is a record in the Hugging Face format:

    {"question": "Janet's ducks lay 16 eggs per day. ...",
     "answer": "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\\n...\\n#### 18"}

The gold answer is the number after "####" (commas dropped). The reference solution (what the
bootstrap fine-tunes on) is the rationale without its <<...>> calculator annotations, one step per
line, and a last line "The answer is N":

    Janet sells 16 - 3 - 4 = 9 duck eggs a day.
    She makes 9 * 2 = $18 every day at the farmer's market.
    The answer is 18

Train and eval problems are disjoint by construction, as in the arithmetic task: a problem belongs to
the eval split iff a hash of its question falls in the eval bucket (`rl.tasks.arithmetic.split_of`).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rl.config import GSM8KConfig
from rl.grading.answers import extract_gsm8k_answer, normalize_number, numbers_equal
from rl.tasks.arithmetic import split_of
from rl.tasks.base import Problem
from rl.tasks.termination import NewlineStep, Termination

FINAL_PREFIX = "The answer is"
_CALCULATOR_RE = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations, e.g. <<16-3-4=9>>


def reference_solution(rationale: str, answer: str) -> str:
    """The rationale without calculator annotations and blank lines, then "The answer is N", one step per line."""
    lines = [line.strip() for line in _CALCULATOR_RE.sub("", rationale).split("\n")]
    return "".join(f"{line}\n" for line in lines if line) + f"{FINAL_PREFIX} {answer}\n"


def load_gsm8k(path: str | Path) -> list[Problem]:
    """Problems of a JSONL file in the HF GSM8K format, in file order.

    Raises:
        ValueError: naming file:line for a line that is not JSON, lacks a string "question" or "answer",
            has no final "#### N" with a number N, or repeats an earlier question; naming the file when it
            is missing or empty.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such GSM8K file (task.gsm8k.path)")
    problems: list[Problem] = []
    first_line: dict[str, int] = {}  # question -> the line it was read from
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not JSON ({e.msg})") from None
        if not (isinstance(rec, dict) and isinstance(rec.get("question"), str) and isinstance(rec.get("answer"), str)):
            raise ValueError(f"{where}: a GSM8K record needs string fields 'question' and 'answer'")
        question = rec["question"].strip()
        if "####" not in rec["answer"]:
            raise ValueError(f"{where}: the answer has no final '#### N'")
        rationale, final = rec["answer"].rsplit("####", 1)
        answer = normalize_number(final)
        if answer is None:
            raise ValueError(f"{where}: '#### {final.strip()}' is not a number")
        if question in first_line:
            raise ValueError(f"{where}: repeats the question of line {first_line[question]}")
        first_line[question] = lineno
        problems.append(Problem(id=f"gsm8k-{hashlib.sha1(question.encode()).hexdigest()[:12]}", question=question,
                                answer=answer, solution=reference_solution(rationale, answer)))
    if not problems:
        raise ValueError(f"{path}: holds no problems")
    return problems


@dataclass
class GSM8KTask:
    cfg: GSM8KConfig
    name: str = "gsm8k"
    termination: Termination = field(default_factory=NewlineStep)  # a step is one sentence-line of the rationale

    def __post_init__(self) -> None:
        if not self.cfg.path:
            raise ValueError("task.gsm8k.path is not set: give the JSONL file of GSM8K problems")
        # read once here, so a bad file stops the run before any work and the task travels to Ray actors whole
        self.problems = load_gsm8k(self.cfg.path)
        self.splits = {s: [p for p in self.problems if split_of(p.question) == s] for s in ("train", "eval")}

    # ---- Task protocol -------------------------------------------------------------
    def prompt(self, problem: Problem) -> str:
        return f"Q: {problem.question}\n"

    def is_terminal(self, step: str) -> bool:
        return self.extract_answer(step) is not None

    def extract_answer(self, solution: str) -> str | None:
        return extract_gsm8k_answer(solution)

    def is_correct(self, problem: Problem, answer: str | None) -> bool:
        return numbers_equal(answer, problem.answer)

    def reward(self, problem: Problem, solution: str) -> float:
        """1.0 iff the solution's first "The answer is N" (or "#### N") equals the gold number."""
        return float(self.is_correct(problem, self.extract_answer(solution)))

    def generate(self, n: int, seed: int, split: str = "train") -> list[Problem]:
        """n distinct problems of the split drawn from the file, in an order deterministic in seed."""
        if split not in self.splits:
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        pool = self.splits[split]
        if n > len(pool):
            raise ValueError(f"task.gsm8k: {self.cfg.path} holds {len(pool)} {split} problems, {n} were asked for "
                             "(lower bootstrap.examples, loop.prompts_per_round or loop.eval_size)")
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        return [pool[int(i)] for i in rng.choice(len(pool), size=n, replace=False)]
