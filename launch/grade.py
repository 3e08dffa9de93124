"""`arbor grade`: grade a JSONL file of model completions against gold answers with a task's grader.

Each line: {"question" (or "prompt"), "answer" (the gold, in the task's own format), "completion"}; an "id" is
kept when present, else the line number is the id. For code a line is a HumanEval or MBPP record with its tests
plus "completion" (rl/grading/code.py). The whole file is checked before anything is graded, and a bad line stops
the command with its file:line; nothing is written then.
"""
from __future__ import annotations

import json
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


def grade_file(task: str, data: str | Path, out: str | Path | None = None) -> dict:
    """Grade every line of data with the task's grader; write the results as JSON to out (when given).

    Returns:
        {"task", "data", "accuracy", "n", "records": [{"id", "prediction", "gold", "correct"}, ...]}.
    Raises:
        ValueError: naming file:line for a malformed line or gold answer; nothing is written then.
    """
    path = Path(data)
    grade = _grader(task)
    records = []
    for lineno, rec in _read(path, task):
        try:
            prediction, gold, correct = grade(rec)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{lineno}: {type(e).__name__}: {e}") from None
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
