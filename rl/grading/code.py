"""The code grader: a completion run against a problem's tests in the sandbox (rl.grading.sandbox).

Two record formats:

  HumanEval  {"task_id", "prompt", "test", "entry_point", ...}; the completion is the function body
             that follows the prompt. The program is prompt + completion, then the record's `test`
             (which defines `check(candidate)`) and `check(entry_point)`. The check function is one
             test, all or nothing: its asserts share state and some loop over inputs, so splitting them
             is not safe in general. total = 1.
  MBPP       {"text", "test_list": ["assert ...", ...], ...}; the completion is a whole program. Each
             assert runs on its own after the program, in the same process; the reward is the fraction
             that pass (an assert that hangs ends the run, and it and the later ones count as failed).

A harness wraps the completion: it reads a one-time token from stdin before the completion runs, then
prints "<token> pass i" after test i succeeds. Only those lines count, so a completion that calls
sys.exit(0) or prints "pass" does not pass.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

from rl.grading.sandbox import RunResult, SandboxLimits, run_program

_HARNESS = '''\
import sys as _sys
_token = _sys.stdin.readline().strip()
_g = {"__name__": "__main__", "__builtins__": __builtins__}
try:
    exec(compile(%(program)r, "solution.py", "exec"), _g)
except BaseException as _e:
    print("solution error:", type(_e).__name__, _e, file=_sys.stderr)
    _sys.exit(1)
for _i, _test in enumerate(%(tests)r):
    try:
        exec(compile(_test, "test_%%d.py" %% _i, "exec"), _g)
    except BaseException as _e:
        print("test", _i, "failed:", type(_e).__name__, _e, file=_sys.stderr)
    else:
        print(_token, "pass", _i, flush=True)
'''


@dataclass(frozen=True)
class CodeResult:
    correct: bool      # every test passed
    prediction: str    # "passed 3/5"
    status: str        # the sandbox's: pass (all tests passed), fail, timeout, error
    passed: int
    total: int
    message: str       # the sandbox message (stderr tail, the limit that was hit)
    reward: float      # passed / total


def program_and_tests(record: dict, completion: str) -> tuple[str, list[str]]:
    """(program, tests) of a HumanEval or MBPP record; ValueError naming the missing field otherwise."""
    if not isinstance(completion, str):
        raise ValueError(f"completion must be a string, got {type(completion).__name__}")
    if "test_list" in record:
        tests = record["test_list"]
        if not (isinstance(tests, list) and tests and all(isinstance(t, str) for t in tests)):
            raise ValueError("an MBPP record's test_list must be a non-empty list of assert strings")
        setup = record.get("test_setup_code", "") or ""
        return (setup + "\n" if setup else "") + completion, list(tests)
    missing = [k for k in ("prompt", "test", "entry_point") if not isinstance(record.get(k), str)]
    if missing:
        raise ValueError(f"not a code record: a HumanEval record needs string fields prompt, test, entry_point "
                         f"(missing {', '.join(missing)}); an MBPP record needs test_list")
    return record["prompt"] + completion, [record["test"] + f"\n\ncheck({record['entry_point']})\n"]


def grade_code(record: dict, completion: str, limits: SandboxLimits | None = None) -> CodeResult:
    """Run the completion against the record's tests in the sandbox."""
    program, tests = program_and_tests(record, completion)
    token = secrets.token_hex(16)
    run: RunResult = run_program(_HARNESS % {"program": program, "tests": tests}, limits, stdin=token + "\n")
    passed_ids = set()
    for line in run.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == token and parts[1] == "pass" and parts[2].isdigit():
            passed_ids.add(int(parts[2]))
    passed, total = len(passed_ids & set(range(len(tests)))), len(tests)
    correct = passed == total and run.status == "pass"
    status = "pass" if correct else ("fail" if run.status == "pass" else run.status)
    return CodeResult(correct=correct, prediction=f"passed {passed}/{total}", status=status, passed=passed,
                      total=total, message=run.message, reward=passed / total)
