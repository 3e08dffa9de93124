"""bench/search_quality.py's dev problems: the temperatures are tuned on problems that share no question with the
test problems, even where two seeds of the generator draw the same question."""
from bench.search_quality import EVAL_SEED, dev_problems
from rl.config import load_config
from rl.tasks import build_task


def test_dev_problems_share_no_question_with_test():
    task = build_task(load_config("configs/arithmetic.yaml").task)  # the README job's task, which the bench reads
    test = task.generate(400, EVAL_SEED, "eval")
    raw = task.generate(100, 4242, "eval")
    assert {p.question for p in raw} & {p.question for p in test}  # the seeds alone overlap (37 of 100 did)
    dev = dev_problems(task, test, 100, 4242)
    assert len(dev) == 100 and len({p.question for p in dev}) == 100
    assert not {p.question for p in dev} & {p.question for p in test}

