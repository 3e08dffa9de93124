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

The train split is read from task.gsm8k.train_path and the eval split from task.gsm8k.eval_path (GSM8K's
own train and test files; a question in both stops the run). Given one file instead (task.gsm8k.path), train
and eval problems are disjoint by construction, as in the arithmetic task: a problem belongs to the eval
split iff a hash of its question falls in the eval bucket (`rl.tasks.arithmetic.split_of`).
"""
from __future__ import annotations

import ast
import hashlib
import json
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rl.config import GSM8KConfig
from rl.grading.answers import extract_gsm8k_answer, normalize_number, numbers_equal
from rl.tasks.arithmetic import split_of
from rl.tasks.base import Problem, question_and_steps
from rl.tasks.termination import NewlineStep, Termination

FINAL_PREFIX = "The answer is"
_CALCULATOR_RE = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations, e.g. <<16-3-4=9>>
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_TIMES_RE = re.compile(r"(?<=[0-9)]) ?[x×] ?(?=[0-9(])")            # "8 x 2" -> "8*2"; "3x + 4" stays algebra
_THOUSANDS_RE = re.compile(r"(?<=[0-9]),(?=[0-9]{3})")              # "1,200" -> "1200"
_ARITH = r"[0-9$.()+\-*/ ]"
_LEFT_RE = re.compile(rf"(?<![A-Za-z0-9.+\-*/$])[$(]*[0-9]{_ARITH}*$")  # the computation just before an "="
_RIGHT_RE = re.compile(rf"^\s*[$(]*[0-9]{_ARITH}*")                  # the computation just after it


def _arithmetic(node: ast.AST) -> float:
    """Value of a parsed + - * / expression of numbers; ValueError for anything else."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _arithmetic(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_arithmetic(node.left), _arithmetic(node.right))
    raise ValueError("not arithmetic")


def _value(expr: str) -> tuple[float, float] | None:
    """(value, rounding tolerance) of an arithmetic text, or None. A decimal literal may be rounded (3.33)."""
    expr = expr.replace("$", "").strip()
    try:
        value = _arithmetic(ast.parse(expr, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None
    literal = re.fullmatch(r"[0-9]+\.([0-9]+)", expr)
    return value, (0.5 * 10 ** -len(literal.group(1)) if literal else 1e-9 * max(1.0, abs(value)))


def computations(step: str) -> list[bool]:
    """Each "a op b = c" of a step (chains "a = b = c" pairwise): whether it is true arithmetic.

    Only a computation between numbers is judged: a side with words, a percent, a mixed number ("3 1/2")
    or a variable ("3x + 4") makes the pair unjudged, and so does "a = b" with no operator on either side.
    """
    text = _TIMES_RE.sub("*", step.replace("–", "-").replace("−", "-"))
    parts = _THOUSANDS_RE.sub("", text).split("=")
    out = []
    for before, after in zip(parts, parts[1:]):
        left, right = _LEFT_RE.search(before.rstrip()), _RIGHT_RE.match(after)
        if left is None or right is None or re.search(r"[+\-*/x×]\s*$", before[:left.start()]):
            continue  # "9 hours * 2/3 = 6": the computation starts in words
        rtext = right.group(0).rstrip(" .")
        if after[len(rtext):len(rtext) + 1].strip() not in ("", ".", ",", ";", ")"):
            continue  # "50%", "3 1/2 hours" is cut at the space and then the next part decides, "8hours"
        a, b = left.group(0), rtext
        if not re.search(r"[0-9)]\s*[+\-*/]", a + " = " + b.replace("=", "")):
            continue
        va, vb = _value(a), _value(b)
        if va is not None and vb is not None:
            out.append(abs(va[0] - vb[0]) <= max(va[1], vb[1]))
    return out


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
        raise ValueError(f"{path}: no such GSM8K file (task.gsm8k.path, train_path or eval_path)")
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
        c = self.cfg
        # read once here, so a bad file stops the run before any work and the task travels to Ray actors whole
        if c.path and (c.train_path or c.eval_path):
            raise ValueError("task.gsm8k: give train_path and eval_path (the data set's own splits) or path "
                             "(one file split by question hash), not both")
        if c.path:
            self.problems = load_gsm8k(c.path)
            self.splits = {s: [p for p in self.problems if split_of(p.question) == s] for s in ("train", "eval")}
            return
        if not (c.train_path and c.eval_path):
            raise ValueError("task.gsm8k.train_path and task.gsm8k.eval_path are not both set: give the JSONL "
                             "files of GSM8K's train and test splits (or task.gsm8k.path, one file split by hash)")
        self.splits = {"train": load_gsm8k(c.train_path), "eval": load_gsm8k(c.eval_path)}
        shared = {p.id for p in self.splits["train"]} & {p.id for p in self.splits["eval"]}
        if shared:
            raise ValueError(f"task.gsm8k: {len(shared)} questions of {c.eval_path} are also in {c.train_path}")
        self.problems = self.splits["train"] + self.splits["eval"]

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

    def step_utilities(self, state: str) -> list[float]:
        """The rule-based utility of each step of a state (prompt + steps), read from the text alone.

        A calculator check: a step is 0.0 when one of its "a op b = c" computations is wrong, else 1.0
        (steps with no computation it can judge, and the answer line, are 1.0). rl.grading.RuleCritic serves it.
        """
        _, steps = question_and_steps(state, "GSM8K")
        return [float(all(computations(step))) for step in steps]

    def generate(self, n: int, seed: int, split: str = "train") -> list[Problem]:
        """n distinct problems of the split drawn from the file, in an order deterministic in seed."""
        if split not in self.splits:
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        pool = self.splits[split]
        if n > len(pool):
            where = self.cfg.path or (self.cfg.train_path if split == "train" else self.cfg.eval_path)
            raise ValueError(f"task.gsm8k: {where} holds {len(pool)} {split} problems, {n} were asked for "
                             "(lower bootstrap.examples, loop.prompts_per_round or loop.eval_size)")
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        return [pool[int(i)] for i in rng.choice(len(pool), size=n, replace=False)]
