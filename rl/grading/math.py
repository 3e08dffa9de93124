"""MATH answers (Hendrycks et al. 2021): the last \\boxed{...} of a solution, compared with math-verify.

The final answer of a solution is the content of its last `\\boxed{...}` (or `\\fbox{...}`), with its braces
matched, so `\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`. Two answers are equal when math-verify (Hugging Face's
`math_verify.parse` + `math_verify.verify`) finds them equal: `\\frac{14}{3}` and `14/3`, `0.5` and `\\frac12`,
`x=3` and `3` (an assignment against a value), `[1,2)` and `[1, 2)`, `90^\\circ` and `90` all are.

Every comparison has a time limit (`timeout_s`): math-verify enforces it with SIGALRM, which only the main thread
of a process can use, so a call from another thread (the rollout worker's search threads) is sent to a helper
process whose main thread applies it, and that process is killed and replaced when it overruns.
"""
from __future__ import annotations

import atexit
import json
import re
import select
import subprocess
import sys
import threading
from pathlib import Path

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_BARE_RE = re.compile(r"\\boxed[ \t]+([^\s$\\{}]+)")  # "\boxed 5", as some models write it
_REPO_ROOT = str(Path(__file__).resolve().parents[2])  # where `-m rl.grading.math` imports from
DEFAULT_TIMEOUT_S = 5  # seconds per parse and per comparison (math-verify's own default)


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` of text, braces matched; None if there is none.

    An unclosed last box (a solution cut mid-answer) is no answer: None.
    """
    starts = [m.end() for m in _BOXED_RE.finditer(text)]
    bare = list(_BOXED_BARE_RE.finditer(text))
    if bare and (not starts or bare[-1].start() > starts[-1]):
        return bare[-1].group(1).rstrip(".,;:") or None  # "\boxed 5." ends a sentence
    if not starts:
        return None
    depth, i = 1, starts[-1]
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2  # a command or an escaped brace ("\{" is a literal brace, not a group)
            continue
        depth += {"{": 1, "}": -1}.get(c, 0)
        if depth == 0:
            return text[starts[-1]:i].strip()
        i += 1
    return None


def gold_answer(text: str) -> str:
    """The gold answer of a MATH record's answer or solution text: its last box if it has one, else the text."""
    boxed = last_boxed(text)
    return (boxed if boxed is not None else text).strip()


def _parse(answer: str, timeout_s: int):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse
    # boxed, so math-verify takes the whole answer as one expression (not the last number of a "1, 2" list)
    return parse(f"\\boxed{{{answer}}}", [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()],
                 parsing_timeout=timeout_s)


def _equal_here(prediction: str, gold: str, timeout_s: int) -> bool:
    """math-verify's verdict, computed in this thread (it must be a main thread: SIGALRM enforces the limit)."""
    from math_verify import verify
    g, p = _parse(gold, timeout_s), _parse(prediction, timeout_s)
    if not g or not p:
        return False
    return bool(verify(g, p, timeout_seconds=timeout_s))


class _HelperProcess:
    """A `python -m rl.grading.math` child that runs comparisons for threads other than the main one.

    One JSON request per line on its stdin, "1" or "0" per line on its stdout; the child's main thread applies
    math-verify's limits, and the parent kills and replaces a child that does not answer in time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def equal(self, prediction: str, gold: str, timeout_s: int) -> bool:
        with self._lock:  # one comparison at a time: the child has one main thread
            if self._proc is None or self._proc.poll() is not None:
                self._proc = subprocess.Popen([sys.executable, "-m", "rl.grading.math"], stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                              cwd=_REPO_ROOT)
            self._proc.stdin.write(json.dumps({"prediction": prediction, "gold": gold, "timeout_s": timeout_s}) + "\n")
            self._proc.stdin.flush()
            # two parses and a comparison, each limited inside the child; slack for its start-up (imports sympy)
            ready, _, _ = select.select([self._proc.stdout], [], [], 3 * timeout_s + 30)
            line = self._proc.stdout.readline() if ready else ""
            if line.strip() not in ("0", "1"):
                self._kill()  # hung past its alarms, or died
                return False
            return line.strip() == "1"


_HELPER = _HelperProcess()
atexit.register(_HELPER._kill)


def math_equal(prediction: str | None, gold: str, *, timeout_s: int = DEFAULT_TIMEOUT_S) -> bool:
    """Whether a predicted final answer equals the gold one by math-verify; None or an unparsable one is wrong.

    Args:
        prediction: an extracted answer (`last_boxed` of a completion), e.g. "14/3".
        gold: the gold answer, e.g. "\\frac{14}{3}" (not a whole solution: see gold_answer).
        timeout_s: seconds each parse and the comparison may take; an overrun counts as not equal.
    """
    if prediction is None or not prediction.strip() or not gold.strip():
        return False
    if threading.current_thread() is threading.main_thread():
        return _equal_here(prediction, gold, timeout_s)
    return _HELPER.equal(prediction, gold, timeout_s)


def grade_math(completion: str, gold: str, *, timeout_s: int = DEFAULT_TIMEOUT_S) -> tuple[str | None, bool]:
    """(the completion's final answer, whether it equals the gold answer or solution)."""
    prediction = last_boxed(completion)
    return prediction, math_equal(prediction, gold_answer(gold), timeout_s=timeout_s)


def _serve() -> None:
    """The helper child's loop: a request per stdin line, an answer per stdout line."""
    for line in sys.stdin:
        req = json.loads(line)
        print("1" if _equal_here(req["prediction"], req["gold"], req["timeout_s"]) else "0", flush=True)


if __name__ == "__main__":
    _serve()
