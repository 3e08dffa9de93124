import json
from pathlib import Path

import pytest

from rl.config import GSM8KConfig, TaskConfig, load_config
from rl.grading import extract_gsm8k_answer, normalize_number, numbers_equal
from rl.tasks import GSM8KTask, build_task
from rl.tasks.arithmetic import split_of
from rl.tasks.base import Problem
from rl.tasks.gsm8k import load_gsm8k, reference_solution
from rl.tasks.termination import NewlineStep

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "gsm8k_sample.jsonl"   # lines 1, 2, 3, 147 and 596 of the test split
FULL = ROOT / "tests" / "data" / "gsm8k_test.jsonl"             # the GSM8K test split (MIT, LICENSE.gsm8k)
TRAIN_HEAD = ROOT / "tests" / "data" / "gsm8k_train_head300.jsonl"  # its train split's first 300 lines


def sample_task() -> GSM8KTask:
    return GSM8KTask(GSM8KConfig(path=str(SAMPLE)))


def test_number_normalisation():
    for text in ("18", "18.0", "$18", " 18. ", "18.00"):
        assert normalize_number(text) == "18", text
    assert normalize_number("$1,250.00") == "1250" and normalize_number("-3.50") == "-3.5"
    assert normalize_number(".5") == "0.5" and normalize_number("-0") == "0"
    for text in ("", "abc", "1e5", "nan", "inf", "1.2.3", "--4"):
        assert normalize_number(text) is None, text
    assert numbers_equal("18.0", "18") and numbers_equal("$18", "18") and numbers_equal("2,125", "2125")
    assert not numbers_equal("18.5", "18") and not numbers_equal(None, "18") and not numbers_equal("x", "x")


def test_answer_extraction_on_real_lines():
    recs = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    assert [extract_gsm8k_answer(r["answer"]) for r in recs] == ["18", "3", "70000", "2125", "13"]
    assert "#### 2,125" in recs[3]["answer"]                  # the gold N has its commas removed
    # our reference format, and what a model might write instead
    assert extract_gsm8k_answer("She makes $18.\nThe answer is 18\n") == "18"
    assert extract_gsm8k_answer("So the answer is $1,250.") == "1250"
    assert extract_gsm8k_answer("The answer is: 4.50 dollars") == "4.5"
    assert extract_gsm8k_answer("The answer is 7\nThe answer is 8\n") == "7"   # the first one counts
    assert extract_gsm8k_answer("9 * 2 = 18 dollars") is None
    assert extract_gsm8k_answer("The answer is unclear") is None


def test_problems_and_reference_solutions_from_the_sample():
    task = sample_task()
    assert [p.answer for p in task.problems] == ["18", "3", "70000", "2125", "13"]
    janet = task.problems[0]
    assert janet.question.startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert janet.solution == ("Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
                              "She makes 9 * 2 = $18 every day at the farmer\u2019s market.\n"
                              "The answer is 18\n")                 # no <<16-3-4=9>> annotations, a final line
    assert reference_solution("a = <<1+1=2>>2\n\nb\n", "2") == "a = 2\nb\nThe answer is 2\n"  # blank lines dropped
    assert len({p.id for p in task.problems}) == 5 and all(p.id.startswith("gsm8k-") for p in task.problems)
    for p in task.problems:
        assert "<<" not in p.solution and ">>" not in p.solution and "####" not in p.solution
        assert p.solution.endswith(f"The answer is {p.answer}\n")
        assert task.extract_answer(p.solution) == p.answer and task.reward(p, p.solution) == 1.0
        steps = task.termination.split(p.solution)   # steps end at newlines; only the last carries the answer
        assert all(s.endswith("\n") for s in steps) and len(steps) >= 2
        assert task.is_terminal(steps[-1]) and not any(task.is_terminal(s) for s in steps[:-1])
        assert task.prompt(p) == f"Q: {p.question}\n"


def test_reward_compares_numerically():
    task = sample_task()
    p = Problem(id="x", question="q", answer="18")
    assert task.reward(p, "9 * 2 = 18\nThe answer is 18\n") == 1.0
    assert task.reward(p, "The answer is 18.0\n") == 1.0 and task.reward(p, "The answer is $18.\n") == 1.0
    assert task.reward(p, "#### 18") == 1.0                     # the GSM8K format is read too
    assert task.reward(p, "The answer is 19\n") == 0.0 and task.reward(p, "18\n") == 0.0
    assert task.reward(p, "The answer is 19\nThe answer is 18\n") == 0.0
    assert task.is_correct(Problem(id="y", question="q", answer="2125"), "2,125")
    assert not task.is_correct(p, None)


def test_registered_under_task_name_with_its_termination():
    task = build_task(TaskConfig(name="gsm8k", gsm8k=GSM8KConfig(path=str(SAMPLE))))
    assert isinstance(task, GSM8KTask) and isinstance(task.termination, NewlineStep)
    assert type(build_task(TaskConfig(name="gsm8k", termination="formula_paragraph",
                                      gsm8k=GSM8KConfig(path=str(SAMPLE)))).termination).__name__ == \
        "FormulaParagraphStep"
    with pytest.raises(ValueError, match="task.gsm8k.train_path and task.gsm8k.eval_path are not both set"):
        build_task(TaskConfig(name="gsm8k"))


def test_splits_of_the_real_file_are_disjoint_and_draws_are_seeded():
    task = GSM8KTask(GSM8KConfig(path=str(FULL)))
    train, ev = task.splits["train"], task.splits["eval"]
    assert len(task.problems) == 1319 and len(train) + len(ev) == 1319
    assert 0.15 < len(ev) / 1319 < 0.25                         # one hash bucket in five
    assert not {p.question for p in train} & {p.question for p in ev}
    assert all(split_of(p.question) == "eval" for p in ev)
    a, b = task.generate(50, 3, "train"), task.generate(50, 3, "train")
    assert a == b and a != task.generate(50, 4, "train") and len({p.id for p in a}) == 50
    assert {p.id for p in a} <= {p.id for p in train}
    assert {p.id for p in task.generate(len(ev), 0, "eval")} == {p.id for p in ev}   # all of a split, once each
    with pytest.raises(ValueError, match=rf"task.gsm8k: .*holds {len(ev)} eval problems, {len(ev) + 1} were asked"):
        task.generate(len(ev) + 1, 0, "eval")
    with pytest.raises(ValueError, match="split must be"):
        task.generate(1, 0, "test")


@pytest.mark.parametrize("lines, bad_line, message", [
    (['{"question": "q1", "answer": "a\\n#### 1"}', '{"question": "q2", "answer": "a"'], 2, "not JSON"),
    (['{"question": "q1", "answer": "a\\n#### 1"}', "", '{"question": "q2", "answer": "5 apples"}'], 3,
     "no final '#### N'"),
    (['{"question": "q1", "answer": "a\\n#### many"}'], 1, "'#### many' is not a number"),
    (['{"question": "q1", "solution": "a\\n#### 1"}'], 1, "needs string fields 'question' and 'answer'"),
    (['["q1", "a\\n#### 1"]'], 1, "needs string fields"),
    (['{"question": "q1", "answer": "#### 1"}', '{"question": "q1 ", "answer": "#### 2"}'], 2,
     "repeats the question of line 1"),
])
def test_a_bad_line_names_file_and_line(tmp_path, lines, bad_line, message):
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"bad.jsonl:{bad_line}: .*{message}"):
        load_gsm8k(f)


def test_a_missing_or_empty_file_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"nope.jsonl: no such GSM8K file \(task.gsm8k.path, train_path or eval_path\)"):
        GSM8KTask(GSM8KConfig(path=str(tmp_path / "nope.jsonl")))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="empty.jsonl: holds no problems"):
        load_gsm8k(tmp_path / "empty.jsonl")


def test_repo_config_builds_a_controller_over_the_file(monkeypatch, tmp_path):
    from launch.controller import Controller
    monkeypatch.chdir(ROOT)                                   # task.gsm8k.path is relative to the repo root
    data = [f"task.gsm8k.train_path={TRAIN_HEAD}", f"task.gsm8k.eval_path={FULL}"]
    cfg = load_config("configs/gsm8k.yaml", [f"run_dir={tmp_path}", "loop.eval_size=30", "loop.prompts_per_round=12", *data])
    assert cfg.task.name == "gsm8k" and cfg.imagination.rewrite
    ctl = Controller(cfg)   # no Ray until setup()
    test_ids = {p.id for p in load_gsm8k(FULL)}
    assert len(ctl.eval_problems) == 30 and {p.id for p in ctl.eval_problems} <= test_ids   # the test file's
    first, second = ctl.train_problems(1), ctl.train_problems(2)
    assert len(first) == 12 and first != second and first == ctl.train_problems(1)
    assert {p.id for p in first + second} <= {p.id for p in load_gsm8k(TRAIN_HEAD)}         # the train file's
    # the decontamination index holds the 8-grams of exactly the questions evaluated on
    from rl.imagination import build_ngram_index, ngram_overlap
    assert ctl.eval_index == build_ngram_index([p.question for p in ctl.eval_problems], 8)
    assert ngram_overlap(ctl.eval_problems[0].question, ctl.eval_index, 8) == 1.0
    with pytest.raises(ValueError, match="imagination.curriculum grows the arithmetic generator"):
        Controller(load_config("configs/gsm8k.yaml", [f"run_dir={tmp_path}", "imagination.curriculum=true", *data]))


def test_train_and_eval_files_are_the_splits(tmp_path):
    task = GSM8KTask(GSM8KConfig(train_path=str(TRAIN_HEAD), eval_path=str(FULL)))
    assert len(task.splits["train"]) == 300 and len(task.splits["eval"]) == 1319
    assert task.splits["eval"][0].answer == "18" and len(task.problems) == 1619
    assert {p.id for p in task.generate(20, 0, "train")} <= {p.id for p in task.splits["train"]}
    with pytest.raises(ValueError, match="gsm8k_train_head300.jsonl holds 300 train problems, 301 were asked"):
        task.generate(301, 0, "train")
    with pytest.raises(ValueError, match="not both"):
        GSM8KTask(GSM8KConfig(path=str(SAMPLE), train_path=str(TRAIN_HEAD), eval_path=str(FULL)))
    with pytest.raises(ValueError, match="are not both set"):
        GSM8KTask(GSM8KConfig(train_path=str(TRAIN_HEAD)))
    with pytest.raises(ValueError, match="5 questions of .*gsm8k_sample.jsonl are also in .*gsm8k_test.jsonl"):
        GSM8KTask(GSM8KConfig(train_path=str(FULL), eval_path=str(SAMPLE)))
