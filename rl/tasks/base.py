"""Problem records and the Task protocol."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from rl.tasks.termination import Termination


@dataclass(frozen=True)
class Problem:
    id: str              # stable id, unique within a data file
    question: str        # the text the policy sees after the prompt prefix
    answer: str          # gold final answer
    solution: str = ""   # a reference solution; the task's termination splits it into steps (bootstrap only)


class Task(Protocol):
    name: str
    termination: Termination  # where a step (an option, AlphaLLM §4.2) ends; searches and backends stop there

    def prompt(self, problem: Problem) -> str:
        """Text the policy continues; steps are appended to it."""

    def is_terminal(self, step: str) -> bool:
        """True when a step ends the solution (it carries the final answer)."""

    def extract_answer(self, solution: str) -> str | None:
        """The final answer in a solution text, or None."""

    def is_correct(self, problem: Problem, answer: str | None) -> bool:
        """Whether an extracted answer equals the gold one."""

    def reward(self, problem: Problem, solution: str) -> float:
        """1.0 when the solution's final answer is right, else 0.0."""

    def generate(self, n: int, seed: int, split: str) -> list[Problem]:
        """n distinct problems of a split ('train' or 'eval'), deterministic in seed."""


QUESTION_PREFIX = "Q: "  # the prompt of the arithmetic and GSM8K tasks: "Q: <question>\n", then one step per line


def question_and_steps(state: str, task: str) -> tuple[str, list[str]]:
    """(question, step lines) of a state, prompt + newline steps; ValueError naming the task otherwise."""
    lines = state.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last step
    if not lines or not lines[0].startswith(QUESTION_PREFIX):
        raise ValueError(f"not a state of the {task} task (it should start with {QUESTION_PREFIX!r}): {state[:40]!r}")
    return lines[0][len(QUESTION_PREFIX):], lines[1:]


def save_problems(problems: list[Problem], path: str | Path) -> None:
    """Write problems as JSONL, atomically (a temp file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        for p in problems:
            f.write(json.dumps(asdict(p)) + "\n")
    tmp.replace(path)


def load_problems(path: str | Path, *, prompt_tokens=None, context: int | None = None) -> list[Problem]:
    """Read a JSONL file of problems; a bad line raises ValueError naming file:line.

    id is a string or an integer, question a string, answer a string or a number, solution a string.
    With prompt_tokens (problem -> token count of its prompt) and context (the model's positions), a prompt
    that leaves no room for a single generated token is refused too.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such data file")
    problems, seen = [], set()
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not UTF-8 text ({e})") from None
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not a JSON line ({e})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{lineno}: a problem record is a JSON object, got {type(rec).__name__}")
        types = {"id": (str, int), "question": (str,), "answer": (str, int, float), "solution": (str,)}
        for key, ok in types.items():
            if key not in rec:
                if key == "solution":
                    continue
                raise ValueError(f"{path}:{lineno}: missing field '{key}'")
            if not isinstance(rec[key], ok) or isinstance(rec[key], bool):
                raise ValueError(f"{path}:{lineno}: field '{key}' = {rec[key]!r} is not "
                                 f"{' or '.join(t.__name__ for t in ok)}")
        p = Problem(id=str(rec["id"]), question=rec["question"], answer=str(rec["answer"]),
                    solution=rec.get("solution", ""))
        if p.id in seen:
            raise ValueError(f"{path}:{lineno}: duplicate problem id {p.id!r}")
        if prompt_tokens is not None and context is not None and (n := prompt_tokens(p)) >= context:
            raise ValueError(f"{path}:{lineno}: the prompt of problem {p.id!r} is {n} tokens, longer than the "
                             f"model's context of {context}")
        seen.add(p.id)
        problems.append(p)
    if not problems:
        raise ValueError(f"{path}: holds no problems")
    return problems
