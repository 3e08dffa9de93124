"""The MATH task (rl/tasks/math.py) on MATH-500, its loading errors, its termination, and configs/math_tiny.yaml."""
from pathlib import Path

import pytest

from rl.config import MathConfig, TaskConfig, load_config
from rl.tasks import MathTask, build_task
from rl.tasks.base import Problem
from rl.tasks.math import load_math
from rl.tasks.termination import LatexFormulaParagraphStep

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "math500_test.jsonl"   # MATH-500 (MIT, LICENSE.math500)


@pytest.fixture(scope="module")
def task():
    return MathTask(MathConfig(path=str(DATA)))


def test_problems_splits_and_meta(task):
    assert len(task.problems) == 500 and len(task.splits["train"]) + len(task.splits["eval"]) == 500
    assert not {p.id for p in task.splits["train"]} & {p.id for p in task.splits["eval"]}
    first = task.problems[0]
    assert first.answer == "\\left( 3, \\frac{\\pi}{2} \\right)" and first.question.startswith("Convert the point")
    assert task.meta[first.id].level == "2" and task.meta[first.id].subject == "Precalculus"
    assert task.prompt(first).startswith("Q: Convert") and task.prompt(first).count("\n") == 1
    a = task.generate(10, 1, "eval")
    assert a == task.generate(10, 1, "eval") and {p.id for p in a} <= {p.id for p in task.splits["eval"]}


def test_reward_by_the_last_box(task):
    p = Problem(id="x", question="q", answer="\\frac{14}{3}")
    assert task.reward(p, "So $x = \\boxed{14/3}$.") == 1.0
    assert task.reward(p, "\\boxed{3} no, \\boxed{\\dfrac{14}{3}}") == 1.0       # the last box counts
    assert task.reward(p, "\\boxed{\\frac{14}{3}} no, \\boxed{5}") == 0.0
    assert task.reward(p, "the answer is 14/3") == 0.0 and not task.is_terminal("x = 14/3\n\n")
    for prob in task.problems[:40]:
        assert task.reward(prob, prob.solution) == 1.0
        steps = task.termination.split(prob.solution)
        # the step with the box is terminal (in a few solutions an [asy] figure follows it)
        assert "".join(steps) == prob.solution and any(task.is_terminal(s) for s in steps)


def test_steps_end_at_a_blank_line_after_a_formula():
    t = LatexFormulaParagraphStep()
    text = "We need $x$.\n\nSo $x = 3$.\n\nThen \\[y^2 = 9.\\]\n\nThus $\\boxed{3}$."
    assert t.split(text) == ["We need $x$.\n\nSo $x = 3$.\n\n", "Then \\[y^2 = 9.\\]\n\n", "Thus $\\boxed{3}$."]
    assert not t.ends("Let $n$ be the number.\n\n") and t.ends("Then $n + 1 = 4$.\n\n")
    assert isinstance(build_task(TaskConfig(name="math", termination="latex_formula_paragraph",
                                            math=MathConfig(path=str(DATA)))).termination, LatexFormulaParagraphStep)


@pytest.mark.parametrize("line, message", [
    ('{"problem": "p", "solution": "s \\\\boxed{1}", "answer": "1"', "not JSON"),
    ('["p"]', "a MATH record must be a JSON object"),
    ('{"problem": "p", "solution": "s", "level": 1, "subject": "A"}', "no field 'answer' \\(task.math.answer_field\\)"),
    ('{"problem": "p", "solution": "s", "answer": "1", "subject": "A"}', "no field 'level'"),
    ('{"problem": 3, "solution": "s", "answer": "1", "level": 1, "subject": "A"}', "field 'problem' .* must be a string"),
    ('{"problem": "p", "solution": "s", "answer": " ", "level": 1, "subject": "A"}', "no answer"),
])
def test_a_bad_line_names_file_and_line(tmp_path, line, message):
    good = '{"problem": "q0", "solution": "s \\\\boxed{1}", "answer": "1", "level": 1, "subject": "A"}'
    f = tmp_path / "bad.jsonl"
    f.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(ValueError, match=rf"bad.jsonl:3: {message}"):
        load_math(f, MathConfig())


def test_configurable_fields_and_the_answer_from_the_box(tmp_path):
    f = tmp_path / "hendrycks.jsonl"
    f.write_text('{"q": "What is 1+1?", "sol": "It is $\\\\boxed{2}$.", "lvl": "Level 1", "type": "Algebra"}\n'
                 '{"q": "What is 2+2?", "sol": "It is 4.", "lvl": "Level 1", "type": "Algebra"}\n')
    cfg = MathConfig(problem_field="q", solution_field="sol", answer_field="", level_field="lvl", subject_field="type")
    with pytest.raises(ValueError, match=r"hendrycks.jsonl:2: no answer \(the solution has no \\boxed\{\}\)"):
        load_math(f, cfg)
    f.write_text(f.read_text().splitlines()[0] + "\n")
    problems, meta = load_math(f, cfg)
    assert problems[0].answer == "2" and meta[problems[0].id].level == "Level 1"


def test_tiny_config_loads_and_builds_its_task(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    cfg = load_config("configs/math_tiny.yaml", [f"run_dir={tmp_path}"])
    assert cfg.task.name == "math" and cfg.task.termination == "latex_formula_paragraph"
    task = build_task(cfg.task)
    assert isinstance(task, MathTask) and len(task.generate(cfg.loop.eval_size, 0, "eval")) == cfg.loop.eval_size
    with pytest.raises(ValueError, match="not both set"):
        MathTask(MathConfig(train_path=str(DATA)))
