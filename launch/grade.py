"""`arbor grade`: grade a JSONL file of model completions against gold answers with a task's grader.

Each line: {"question" (or "prompt"), "answer" (the gold, in the task's own format), "completion"}; an "id" is
kept when present, else the line number is the id. For code a line is a HumanEval or MBPP record with its tests
plus "completion" (rl/grading/code.py). The whole file is checked before anything is graded, and a bad line stops
the command with its file:line; nothing is written then. Code records are graded `workers` at a time (threads, each
driving one sandbox subprocess); the results are the serial ones, in file order.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

GRADE_TASKS = ("gsm8k", "math", "code")


def _read(path: Path, task: str) -> list[tuple[int, dict]]:
    """(line number, record) of each non-blank line; ValueError naming file:line for a bad one."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file (--data)")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: a line must be a JSON object")
        if not isinstance(rec.get("completion"), str):
            raise ValueError(f"{where}: needs a string field 'completion'")
        if task != "code":
            if not isinstance(rec.get("question", rec.get("prompt")), str):
                raise ValueError(f"{where}: needs a string field 'question' (or 'prompt')")
            if not isinstance(rec.get("answer"), (str, int, float)) or isinstance(rec.get("answer"), bool):
                raise ValueError(f"{where}: needs a gold 'answer' (a string or a number)")
        out.append((lineno, rec))
    if not out:
        raise ValueError(f"{path}: holds no records")
    return out


def _grader(task: str) -> Callable[[dict], tuple[str | None, str, bool]]:
    """A function of a record to (prediction, gold, correct)."""
    if task == "gsm8k":
        from rl.grading.gsm8k import gold_value, grade_gsm8k

        def grade(rec):
            gold = str(rec["answer"])
            gold_value(gold)  # raises ValueError for a gold that is not a number
            prediction, ok = grade_gsm8k(rec["completion"], gold)
            return prediction, gold.rsplit("####", 1)[-1].strip(), ok
        return grade
    if task == "math":
        from rl.grading.math import gold_answer, grade_math

        def grade(rec):
            prediction, ok = grade_math(rec["completion"], str(rec["answer"]))
            return prediction, gold_answer(str(rec["answer"])), ok
        return grade
    if task == "code":
        try:
            from rl.grading.code import grade_code
        except ImportError as e:
            raise ValueError(f"--task code: code grading needs rl/grading/code.py ({e})") from None

        def grade(rec):
            result = grade_code(rec, rec["completion"])
            gold = rec.get("test") or "\n".join(rec.get("test_list", []))
            return result.prediction, gold, bool(result.correct)
        return grade
    raise ValueError(f"--task {task!r}: known tasks are {', '.join(GRADE_TASKS)}")


def grade_file(task: str, data: str | Path, out: str | Path | None = None, *, workers: int | None = None) -> dict:
    """Grade every line of data with the task's grader; write the results as JSON to out (when given).

    Args:
        workers: code records graded at once (sandbox runs in threads); None = the CPU count. gsm8k and math
            grade serially (math-verify's timeout is a signal, which only the main thread receives).
    Returns:
        {"task", "data", "accuracy", "n", "records": [{"id", "prediction", "gold", "correct"}, ...]}.
    Raises:
        ValueError: naming file:line for a malformed line or gold answer; nothing is written then.
    """
    path = Path(data)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if not (isinstance(workers, int) and workers >= 1):
        raise ValueError(f"--workers must be an integer >= 1, got {workers!r}")
    grade = _grader(task)
    lines = _read(path, task)
    if task == "code":  # a record without its tests stops here, before any sandbox run
        from rl.grading.code import program_and_tests
        for lineno, rec in lines:
            try:
                program_and_tests(rec, rec["completion"])
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: {type(e).__name__}: {e}") from None

    def grade_line(line: tuple[int, dict]) -> tuple[str | None, str, bool] | Exception:
        try:
            return grade(line[1])
        except (ValueError, KeyError, TypeError) as e:
            return e

    if task == "code" and workers > 1:
        with ThreadPoolExecutor(min(workers, len(lines))) as pool:
            graded = list(pool.map(grade_line, lines))
    else:
        graded = map(grade_line, lines)  # lazy: the first bad line stops the grading
    records = []
    for (lineno, rec), res in zip(lines, graded):
        if isinstance(res, Exception):
            raise ValueError(f"{path}:{lineno}: {type(res).__name__}: {res}")
        prediction, gold, correct = res
        rid = rec.get("id", rec.get("task_id", rec.get("unique_id", lineno)))
        records.append({"id": rid, "prediction": prediction, "gold": gold, "correct": bool(correct)})
    result = {"task": task, "data": str(path), "accuracy": sum(r["correct"] for r in records) / len(records),
              "n": len(records), "records": records}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(out) + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(out)
    return result
