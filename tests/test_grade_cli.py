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
