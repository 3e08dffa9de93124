import pytest

from rl.config import ArithmeticConfig
from rl.tasks import ArithmeticTask, load_problems, save_problems
from rl.tasks.arithmetic import split_of, verify_expression
from rl.tasks.base import Problem


def test_generator_is_seeded_and_solutions_are_right():
    task = ArithmeticTask(ArithmeticConfig(operators="+-*", max_value=20, max_result=999))
    a, b = task.generate(300, 7, "train"), task.generate(300, 7, "train")
    assert a == b
    assert a != task.generate(300, 8, "train")
    for p in a:
        assert verify_expression(p.question, p.answer)          # Python's own arithmetic agrees
        assert task.reward(p, p.solution) == 1.0                 # the reference solution verifies
        lines = p.solution.strip().split("\n")
        assert lines[-1] == f"Answer: {p.answer}"
        assert lines[-2] == p.answer                             # the last rewrite is the value itself
    assert any("*" in p.question for p in a) and any("(" in p.question for p in a)


def test_knobs_bound_operands_values_and_operators():
    cfg = ArithmeticConfig(min_operands=3, max_operands=3, min_value=2, max_value=5, operators="+", max_result=99)
    for p in ArithmeticTask(cfg).generate(30, 0, "train"):  # 64 possible questions in all
        nums = [int(x) for x in p.question.split("+")]
        assert len(nums) == 3 and all(2 <= x <= 5 for x in nums)


def test_train_and_eval_are_disjoint():
    task = ArithmeticTask(ArithmeticConfig())
    train = {p.question for s in range(3) for p in task.generate(400, s, "train")}
    ev = {p.question for s in range(3) for p in task.generate(200, s, "eval")}
    assert not train & ev
    assert all(split_of(q) == "eval" for q in ev)


def test_verifier_is_exact():
    task = ArithmeticTask(ArithmeticConfig())
    p = Problem(id="x", question="3+4", answer="7")
    assert task.reward(p, "7\nAnswer: 7\n") == 1.0
    assert task.reward(p, p.question + "\n7\nAnswer: 7\n") == 1.0  # restating the question is harmless
    assert task.reward(p, "7\nAnswer: 8\n") == 0.0
    assert task.reward(p, "7\nAnswer: 07\n") == 1.0              # integers compare by value
    assert task.reward(p, "7\n") == 0.0                           # no answer line
    assert task.reward(p, "Answer: 7\n") == 0.0                   # no working
    assert task.reward(p, "3+4\nAnswer: 7\n") == 0.0              # working that stops short of the value
    assert task.reward(p, "8\nAnswer: 7\n") == 0.0                # right answer, wrong working
    assert task.reward(p, "3+4\n10-3\n7\nAnswer: 7\n") == 1.0   # any value-preserving rewrite is fine
    assert task.reward(p, "3+04\nAnswer: 7\n") == 0.0             # not an expression
    assert task.is_correct(p, "7") and not task.is_correct(p, None)
    assert task.is_terminal("Answer: 7\n") and not task.is_terminal("3+4\n")


def test_bad_knobs_are_refused():
    with pytest.raises(ValueError, match="operators"):
        ArithmeticTask(ArithmeticConfig(operators="/"))


def test_jsonl_round_trip_and_bad_lines(tmp_path):
    task = ArithmeticTask(ArithmeticConfig())
    probs = task.generate(20, 1, "eval")
    save_problems(probs, tmp_path / "p.jsonl")
    assert load_problems(tmp_path / "p.jsonl") == probs
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "question": "1+1", "answer": "2"}\n{"id": "b"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        load_problems(tmp_path / "bad.jsonl")
