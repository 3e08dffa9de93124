from pathlib import Path

import numpy as np
import pytest

from fakes import ScriptedPolicy, ToyTask
from rl.config import ArithmeticConfig, GSM8KConfig, ImaginationConfig, SearchConfig
from rl.imagination import (REWRITE_TEMPLATES, Curriculum, answer_agreement, arithmetic_config_for,
                            build_ngram_index, ngram_overlap, rewrite_prompt, synthesize)
from rl.models.policy import StepSample
from rl.tasks import ArithmeticTask, GSM8KTask
from rl.tasks.base import Problem


def test_curriculum_ramps_linearly_then_holds():
    c = Curriculum(start_level=0, end_level=4, ramp_rounds=4)
    assert [c.level(r) for r in range(1, 8)] == [0, 1, 2, 3, 4, 4, 4]
    slow = Curriculum(start_level=1, end_level=3, ramp_rounds=4)  # two levels over four rounds
    assert [slow.level(r) for r in range(1, 7)] == [1, 1, 2, 2, 3, 3]
    assert Curriculum(start_level=0, end_level=2, ramp_rounds=0).level(1) == 2
    with pytest.raises(ValueError, match="1-based"):
        c.level(0)
    with pytest.raises(ValueError, match="start_level"):
        Curriculum(start_level=3, end_level=1)


def test_curriculum_mixes_in_easier_levels():
    c = Curriculum(start_level=0, end_level=4, ramp_rounds=4, easy_frac=0.25)
    levels = c.levels(4, 8, np.random.default_rng(0))              # level(4) = 3
    assert sorted(levels)[2:] == [3] * 6 and all(0 <= x < 3 for x in sorted(levels)[:2])
    assert c.levels(1, 8, np.random.default_rng(0)) == [0] * 8      # nothing easier than the start


def test_arithmetic_config_for_is_monotone_and_valid():
    base = ArithmeticConfig(min_operands=2, max_operands=3, max_value=9, operators="+-", max_result=99)
    assert arithmetic_config_for(0, base) == base
    cfgs = [arithmetic_config_for(k, base, max_operands_cap=5) for k in range(12)]
    assert [c.max_operands for c in cfgs[:4]] == [3, 4, 5, 5]       # capped at 5
    assert [c.max_value for c in cfgs[:3]] == [9, 18, 27] and cfgs[-1].max_value == 99  # capped at max_result
    for a, b in zip(cfgs, cfgs[1:]):
        assert a.max_operands <= b.max_operands and a.max_value <= b.max_value
        assert (b.min_operands, b.min_value, b.operators, b.max_result) == (2, 1, "+-", 99)
    ArithmeticTask(cfgs[-1]).generate(5, 0, "train")                # the hardest level still generates


def test_ngram_overlap_on_hand_strings():
    index = build_ngram_index(["Ann has 5 pens.", "How many pens are left?"], 2)
    assert ("ann", "has") in index and ("pens", "how") not in index  # texts do not run into each other
    assert ngram_overlap("ANN has 5 pens!", index, 2) == 1.0          # case and punctuation ignored
    # bigrams: (bob has) (has 5) (5 pens) (pens are) (are left); all but (bob has) are in the index
    assert ngram_overlap("Bob has 5 pens are left", index, 2) == pytest.approx(4 / 5)
    assert ngram_overlap("Bob has 7 cats", index, 2) == 0.0
    assert ngram_overlap("pens", index, 2) == 0.0                     # shorter than n: no n-grams
    with pytest.raises(ValueError, match="2-grams, not 3-grams"):
        ngram_overlap("Ann has 5 pens", index, 3)


def test_answer_agreement():
    assert answer_agreement(["7", "7", "8", None]) == ("7", 0.5)     # None counts against agreement
    assert answer_agreement(["3", "4"]) == ("3", 0.5)                 # ties go to the first seen
    assert answer_agreement([None, None]) == (None, 0.0)
    assert answer_agreement([]) == (None, 0.0)


def test_rewrite_prompt():
    p = rewrite_prompt("reverse", "Tom has 3 apples.")
    assert "Tom has 3 apples." in p and p.endswith("Reverse problem:")
    assert set(REWRITE_TEMPLATES) == {"rephrase", "change_numbers", "reverse"}
    with pytest.raises(ValueError, match="known templates are rephrase, change_numbers, reverse"):
        rewrite_prompt("shorten", "x")


class WordTask(ToyTask):
    """ToyTask with a prompt that shows the question, so each question gets its own solutions."""

    def prompt(self, problem):
        return f"Q: {problem.question}\n"


class RewritingPolicy(ScriptedPolicy):
    """ScriptedPolicy (rewrites as one-line steps) whose `complete` returns scripted solutions per prompt, in turn."""

    def __init__(self, steps: dict[str, list[str]], solutions: dict[str, list[str]]):
        super().__init__(steps)
        self.solutions = solutions
        self.solved: list[str] = []

    def complete(self, prefixes, *, max_new_tokens=128, temperature=0.0, seed=None):
        served: dict[str, int] = {}
        out = []
        for p in prefixes:
            self.solved.append(p)
            i = served[p] = served.get(p, -1) + 1
            text = self.solutions[p][i % len(self.solutions[p])]
            out.append(StepSample(text=text, num_tokens=len(text), logprob=-1.0, finished=True))
        return out


SEED = Problem(id="s1", question="Tom has 3 apples and buys 4 more. How many apples does he have?", answer="7")
EVAL = ["Ann has 5 pens and loses 2 of them. How many pens are left?"]
CHANGED = "Tom has 5 apples and buys 6 more. How many apples does he have?"
REVERSED = "Tom buys 4 apples and then has 7. How many apples did he have before?"


def scripted_policy() -> RewritingPolicy:
    return RewritingPolicy(
        steps={rewrite_prompt("rephrase", SEED.question): [f" {EVAL[0]}\n"],  # copies an eval question
               rewrite_prompt("change_numbers", SEED.question): [f" {CHANGED}\n"],
               rewrite_prompt("reverse", SEED.question): [f" {REVERSED}\n"]},
        solutions={f"Q: {CHANGED}\n": ["5+6=11\nAnswer: 11\n", "Answer: 11\n", "Answer: 12\n"],  # 2 of 3 agree
                   f"Q: {REVERSED}\n": ["Answer: 3\n", "Answer: 4\n", "no idea\n"]})           # 1 of 3


def run(policy):
    return synthesize([SEED], policy, WordTask(), templates=list(REWRITE_TEMPLATES), samples=3, min_agreement=0.6,
                      eval_index=build_ngram_index(EVAL, 3), max_overlap=0.5, n=3, rng=np.random.default_rng(0))


def test_synthesize_drops_copies_and_disagreement_keeps_the_majority():
    policy = scripted_policy()
    problems, metrics = run(policy)
    assert metrics == {"imagination/proposed": 3, "imagination/kept": 1, "imagination/dropped_invalid": 0,
                       "imagination/dropped_overlap": 1, "imagination/dropped_disagree": 1}
    [p] = problems
    assert p.question == CHANGED and p.answer == "11"                 # gold = the majority answer
    assert p.solution == "5+6=11\nAnswer: 11\n"                       # the first agreeing sample
    assert p.id.startswith("s1-change_numbers-") and run(scripted_policy())[0][0].id == p.id  # stable id
    assert f"Q: {EVAL[0]}\n" not in policy.solved                     # a contaminated rewrite is never solved
    assert policy.solved.count(f"Q: {CHANGED}\n") == 3


def test_synthesize_drops_empty_and_repeated_rewrites():
    policy = RewritingPolicy(steps={rewrite_prompt("rephrase", SEED.question): [f" {SEED.question}\n"],
                                    rewrite_prompt("reverse", SEED.question): ["\n"]}, solutions={})
    problems, metrics = synthesize([SEED], policy, WordTask(), templates=["rephrase", "reverse"], samples=2,
                                   min_agreement=0.5, eval_index=frozenset(), max_overlap=0.5, n=3,
                                   rng=np.random.default_rng(0))
    assert problems == [] and metrics["imagination/dropped_invalid"] == 2 and policy.solved == []


def test_controller_draws_round_prompts_from_the_curriculum(tmp_path):
    from launch.controller import Controller
    from rl.config import load_config
    cfg = load_config(None, [f"run_dir={tmp_path}", "loop.prompts_per_round=40", "loop.eval_size=4",
                             "imagination.curriculum=true", "imagination.start_level=0", "imagination.end_level=2",
                             "imagination.ramp_rounds=2", "imagination.easy_frac=0.25"])
    ctl = Controller(cfg)   # no Ray until setup()
    base = cfg.task.arithmetic.max_operands
    operands = lambda probs: [p.question.count("+") + p.question.count("-") + p.question.count("*") + 1  # noqa: E731
                              for p in probs]
    first, last = ctl.train_problems(1), ctl.train_problems(3)
    assert len(first) == len(last) == 40
    assert max(operands(first)) <= base                  # round 1: level 0, the task as configured
    assert max(operands(last)) == base + 2               # round 3: level 2 adds two operands
    assert sum(o <= base for o in operands(last)) >= 10  # a quarter drawn from the easier levels
    assert ctl.train_problems(3) == last                 # the same prompts for the same round (resume)


# ---- rewriting in the loop: config, the rollout worker with a real tiny model -------------------------
def test_template_choices_match_the_registry():
    import typing

    (item,) = typing.get_args(typing.get_type_hints(ImaginationConfig)["templates"])
    assert set(typing.get_args(item)) == set(REWRITE_TEMPLATES)
    assert ImaginationConfig().templates == list(REWRITE_TEMPLATES) and not ImaginationConfig().rewrite


@pytest.mark.parametrize("override, message", [
    ("imagination.templates=[rephrase, shorten]", r"'imagination.templates\[1\]' = 'shorten' is not one of"),
    ("imagination.templates=[]", r"imagination.templates = \[\]: give one or more distinct templates"),
    ("imagination.templates=[reverse, reverse]", "distinct templates"),
    ("imagination.min_agreement=1.5", "imagination.min_agreement = 1.5 is out of range"),
    ("imagination.max_overlap=-0.1", "imagination.max_overlap = -0.1 is out of range"),
    ("imagination.seeds_per_round=0", "imagination.seeds_per_round = 0 is out of range"),
    ("imagination.ngram=0", "imagination.ngram = 0 is out of range"),
])
def test_rewrite_config_is_checked_loudly(override, message):
    from rl.config import ConfigError, load_config
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["run_dir=r", override])


GSM8K_SAMPLE = Path(__file__).resolve().parent / "data" / "gsm8k_sample.jsonl"


def _gsm8k_worker(tiny_model_dir, task_cls=None):
    from rl.rollout import RolloutWorker
    task = (task_cls or GSM8KTask)(GSM8KConfig(path=str(GSM8K_SAMPLE)))
    search = SearchConfig(max_depth=4, step_max_tokens=8)         # solutions capped at 32 tokens
    return task, RolloutWorker(task, search, str(tiny_model_dir), str(tiny_model_dir), seed=0)


def _check_counts(counts, problems, proposed):
    assert set(counts) == {f"imagination/{k}" for k in ("proposed", "kept", "dropped_invalid", "dropped_overlap",
                                                         "dropped_disagree")}
    assert counts["imagination/proposed"] == proposed
    assert counts["imagination/proposed"] == counts["imagination/kept"] + counts["imagination/dropped_invalid"] + \
        counts["imagination/dropped_overlap"] + counts["imagination/dropped_disagree"]
    assert counts["imagination/kept"] == len(problems)


def test_worker_synthesizes_gsm8k_rewrites_with_the_tiny_model(tiny_model_dir):
    task, worker = _gsm8k_worker(tiny_model_dir)
    seeds = task.splits["train"][:2]
    cfg = ImaginationConfig(rewrite=True, samples=2, min_agreement=0.5, question_max_tokens=16)
    index = build_ngram_index([p.question for p in task.splits["eval"]], cfg.ngram)
    problems, counts = worker.synthesize(seeds, cfg, eval_index=index, seed=0)
    _check_counts(counts, problems, proposed=2 * 3)               # every seed with every template
    for p in problems:                                            # a random model seldom gets here
        assert p.answer and task.extract_answer(p.solution) == p.answer
    # seeded by the call, not by the worker's history: the same seed gives the same rewrites
    worker.rng.random(100)                                        # as searches in between would
    assert worker.synthesize(seeds, cfg, eval_index=index, seed=0) == (problems, counts)


class FirstCharTask(GSM8KTask):
    """GSM8K with a lenient reader (a solution's first character is its answer), so that a random-weight
    policy's samples give answers and a rewrite can be kept: the policy stays real."""

    def extract_answer(self, solution):
        return solution.strip()[:1] or None


def test_worker_keeps_answered_rewrites_and_drops_eval_overlap(tiny_model_dir):
    task, worker = _gsm8k_worker(tiny_model_dir, FirstCharTask)
    seeds = task.splits["train"][:3]
    cfg = ImaginationConfig(rewrite=True, samples=1, min_agreement=1.0, ngram=1, question_max_tokens=16)
    kept, counts = worker.synthesize(seeds, cfg, eval_index=frozenset(), seed=1)
    _check_counts(counts, kept, proposed=3 * 3)
    assert kept and counts["imagination/dropped_overlap"] == 0     # a blank completion is the only way to drop
    for p in kept:
        assert p.answer == p.solution.strip()[0]                  # the gold is the sample's own answer
        assert "\n" not in p.question and p.question not in {s.question for s in seeds}
        assert any(p.id.startswith(f"{s.id}-") for s in seeds)
    # the same call with the kept questions in the eval set: the same rewrites come back and are dropped
    index = build_ngram_index([p.question for p in kept], 1)
    again, counts2 = worker.synthesize(seeds, cfg, eval_index=index, seed=1)
    _check_counts(counts2, again, proposed=9)
    assert counts2["imagination/dropped_overlap"] >= len(kept) and not {p.id for p in kept} & {p.id for p in again}


class RecordingPool:
    """Stands in for the Ray rollout pool only (the controller's plumbing is under test, not the policy)."""

    def __init__(self, kept):
        self.kept, self.synthesized, self.searched = kept, [], []

    def synthesize(self, seeds, cfg, *, eval_index, seed):
        self.synthesized.append((seeds, cfg, eval_index, seed))
        return self.kept, {"imagination/proposed": 3 * len(seeds), "imagination/kept": len(self.kept),
                           "imagination/dropped_invalid": 0, "imagination/dropped_overlap": 0,
                           "imagination/dropped_disagree": 3 * len(seeds) - len(self.kept)}

    def search(self, problems, progress=None, export_trees=0, replay=None):
        self.searched.append(problems)
        return []


def test_controller_appends_kept_rewrites_to_the_round_prompts(monkeypatch, tmp_path):
    from launch.controller import Controller
    from rl.config import load_config
    monkeypatch.chdir(Path(__file__).resolve().parents[1])      # configs/gsm8k.yaml's data paths are relative
    data = ["task.gsm8k.train_path=tests/data/gsm8k_train_head300.jsonl", "task.gsm8k.eval_path=tests/data/gsm8k_test.jsonl"]
    cfg = load_config("configs/gsm8k.yaml", [f"run_dir={tmp_path}", "loop.prompts_per_round=5", "loop.eval_size=10",
                                             "imagination.seeds_per_round=2", *data])
    ctl = Controller(cfg, console=False)
    rewritten = Problem(id="r1", question="A rewritten question?", answer="4", solution="The answer is 4\n")
    ctl.pool, ctl.replay = RecordingPool([rewritten]), None
    found = ctl._search(3)
    [(seeds, im, index, seed)] = ctl.pool.synthesized
    assert seeds == ctl.train_problems(3)[:2] and im is cfg.imagination and index is ctl.eval_index
    assert found["problems"] == ctl.train_problems(3) + [rewritten] == ctl.pool.searched[0]
    assert found["imagination"]["imagination/kept"] == 1 and found["imagination"]["time/imagination"] >= 0
    ctl._search(4)
    assert ctl.pool.synthesized[1][3] != seed                     # each round samples with its own seed
    off = Controller(load_config("configs/gsm8k.yaml", [f"run_dir={tmp_path}", "loop.prompts_per_round=5",
                                                        "loop.eval_size=10", "imagination.rewrite=false", *data]))
    off.pool, off.replay = RecordingPool([rewritten]), None
    assert off._search(3)["problems"] == off.train_problems(3) and off.pool.synthesized == []
    assert off.eval_index == frozenset() and off._search(3)["imagination"] == {}
