"""RFT (loop.method: rft): selection of verified, distinct samples by hand-made cases, sampling through a
scripted policy, the config's checks, and one tiny RFT loop end to end through Ray and DeepSpeed."""
import json

import numpy as np
import pytest

from rl.config import ConfigError, TaskConfig, load_config
from rl.models.policy import StepSample
from rl.rft import RFTSample, rft_metrics, sample_solutions, select_verified, solution_key
from rl.tasks import build_task


def s(pid, text, reward, tokens=3):
    return RFTSample(problem_id=pid, prompt=f"Q{pid}\n", solution=text, reward=reward, tokens=tokens)


def test_select_keeps_verified_distinct_solutions_up_to_the_cap_in_order():
    samples = [s("a", "1+1\n2\n", 1.0), s("a", "wrong\n", 0.0), s("a", "1+1\n2\n", 1.0),   # a repeat
               s("a", "1+1\n 2\n", 1.0),                                                    # same up to spaces
               s("a", "2\n", 1.0), s("a", "1+1=2\n", 1.0),                                # over the cap of 2
               s("b", "x\n", 0.0), s("b", "y\n", 0.5),                                    # none verified
               s("c", "z\n", 1.0)]
    kept = select_verified(samples, max_per_prompt=2)
    assert [(k.problem_id, k.solution) for k in kept] == [("a", "1+1\n2\n"), ("a", "2\n"), ("c", "z\n")]
    assert all(k.reward == 1.0 for k in kept)
    assert select_verified(samples, max_per_prompt=1) == [samples[0], samples[8]]
    assert solution_key("1+1\n 2\n") == solution_key("1+1\n2\n")
    with pytest.raises(ValueError, match="max_per_prompt"):
        select_verified(samples, max_per_prompt=0)
    m = rft_metrics(samples, kept, num_problems=4)
    assert m["rft/samples"] == 9 and m["rft/verified"] == 6 and m["rft/distinct_verified"] == 4
    assert m["rft/kept"] == 3 and m["rft/pass_at_n"] == 2 / 4 == m["rollout/solved_frac"]
    assert m["tokens/generated"] == 9 * 3


class CyclePolicy:
    """complete() returns the listed texts in turn, one token per character; records each call's prompts."""

    def __init__(self, texts):
        self.texts, self.i, self.calls = texts, 0, []

    def complete(self, prefixes, *, max_new_tokens=128, temperature=0.0, seed=None):
        self.calls.append((list(prefixes), temperature))
        out = []
        for _ in prefixes:
            t = self.texts[self.i % len(self.texts)]
            self.i += 1
            out.append(StepSample(text=t, num_tokens=len(t), logprob=-1.0, finished=True))
        return out


def test_sample_solutions_scores_every_sample_with_the_verifier_and_counts_its_tokens():
    task = build_task(TaskConfig())
    probs = task.generate(3, 0, "train")
    right = probs[0].solution
    policy = CyclePolicy([right, "1\nAnswer: 1\n"])
    out = sample_solutions(probs, task, policy, n=4, temperature=0.7, max_new_tokens=64, batch_size=5,
                           rng=np.random.default_rng(0), policy_version=3)
    assert [o.problem_id for o in out] == [p.id for p in probs for _ in range(4)]
    assert [len(c[0]) for c in policy.calls] == [5, 5, 2] and {c[1] for c in policy.calls} == {0.7}
    assert [o.reward for o in out[:4]] == [1.0, 0.0, 1.0, 0.0]                  # problem 0's gold, then a wrong one
    assert all(o.reward == task.reward(probs[int(i) // 4], o.solution) for i, o in enumerate(out))
    assert sum(o.tokens for o in out) == 6 * len(right) + 6 * len("1\nAnswer: 1\n")
    assert {o.policy_version for o in out} == {3} and out[0].prompt == task.prompt(probs[0])
    assert len(select_verified(out, max_per_prompt=4)) == 1                       # two copies of one solution


def test_worker_counts_the_tokens_of_rft_samples_and_of_critic_labels(tiny_model_dir):
    from rl.config import LabelsConfig, RFTConfig, SearchConfig
    from rl.rollout import RolloutWorker
    from rl.tasks import ArithmeticTask
    from tests.conftest import EASY
    task, search = ArithmeticTask(EASY), SearchConfig(simulations=3, branching=2, max_depth=4, step_max_tokens=8)
    problems = task.generate(2, 3, "train")
    plain = RolloutWorker(task, search, str(tiny_model_dir), str(tiny_model_dir), seed=0,
                          labels=LabelsConfig(value_greedy=False))
    assert plain.search(problems).label_tokens == 0                  # no label needed any generation
    samples = plain.rft_samples(problems, RFTConfig(samples=3, batch_size=4))
    assert [x.problem_id for x in samples] == [p.id for p in problems for _ in range(3)]
    assert all(0 < x.tokens <= 8 * 4 for x in samples)               # capped like a search's solution
    greedy = RolloutWorker(task, search, str(tiny_model_dir), str(tiny_model_dir), seed=0)  # value_greedy on
    batch = greedy.search(problems)
    assert batch.label_tokens == sum(r.tokens for r in greedy.evaluate(problems, "greedy")) > 0
    # Math-Shepherd and stronger-policy completions go through one helper, which counts what it generates
    before = plain.label_tokens
    texts = plain._complete_all(plain.policy, [task.prompt(p) for p in problems], 1.0)
    assert len(texts) == 2 and plain.label_tokens > before


def test_config_method_and_rft_section_are_checked(tmp_path):
    cfg = load_config("configs/rft.yaml", [f"run_dir={tmp_path}"])
    assert cfg.loop.method == "rft" and cfg.rft.samples == 8 and cfg.rft.max_per_prompt == 4
    assert load_config("configs/arithmetic.yaml", [f"run_dir={tmp_path}"]).loop.method == "search"
    with pytest.raises(ConfigError, match=r"'loop.method'.*one of"):
        load_config("configs/arithmetic.yaml", [f"run_dir={tmp_path}", "loop.method=rejection"])
    for bad in ("rft.samples=0", "rft.max_per_prompt=0", "rft.temperature=0", "rft.batch_size=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0].replace(".", r"\.")):
            load_config("configs/rft.yaml", [f"run_dir={tmp_path}", bad])


@pytest.mark.slow
@pytest.mark.ray
def test_tiny_rft_loop_trains_the_policy_on_verified_samples_and_counts_tokens(tmp_path, ray_local):
    from launch.controller import BOOTSTRAP_SEED_OFFSET, Controller
    from rl.tasks.base import save_problems
    from tests.test_integration import ROOT, TINY
    # the round prompts are the 8 sums of two digits the policy is bootstrapped on (many times over), so the
    # tiny policy gets some of its samples right within a test's time
    easy = ["task.arithmetic.min_operands=2", "task.arithmetic.max_operands=2", "task.arithmetic.operators=+"]
    task = build_task(load_config(ROOT / "configs" / "rft.yaml", [f"run_dir={tmp_path}", *easy]).task)
    save_problems(task.generate(8, BOOTSTRAP_SEED_OFFSET, "train"), tmp_path / "train.jsonl")
    cfg = load_config(ROOT / "configs" / "rft.yaml", [
        f"run_dir={tmp_path / 'run'}", "loop.rounds=2", *TINY, "wandb.mode=disabled", "loop.log_trees=0", *easy,
        f"task.train_data={tmp_path / 'train.jsonl'}", "bootstrap.steps=100", "bootstrap.examples=8",
        "learner.batch_size=16", "learner.policy_epochs=1", "rft.samples=4", "rft.max_per_prompt=2",
        "search.max_depth=4"])
    ctl = Controller(cfg, resume="none", console=False)
    rows = ctl.run()
    assert [r["round"] for r in rows] == [0, 1, 2] and ctl.version == 3
    assert rows[0]["tokens_generated"] == 0 and rows[0]["tokens_cumulative"] == 0
    assert all(r["tokens_generated"] > 0 for r in rows[1:])
    assert rows[2]["tokens_cumulative"] == rows[1]["tokens_generated"] + rows[2]["tokens_generated"]
    m = ctl.last_metrics
    assert m["rft/samples"] == 4 * 4 and m["tokens/generated"] == rows[2]["tokens_generated"]
    assert not any(k.startswith("learner/value") for k in m)                      # no critic training
    problems = {p.id: p for p in ctl.train_problems(2)}
    kept = [json.loads(line) for line in (tmp_path / "run" / "rft" / "round_0002.jsonl").read_text().splitlines()]
    assert len(kept) == m["rft/kept"] and 0 < len(kept) <= 4 * 2
    assert all(task.reward(problems[k["problem_id"]], k["solution"]) == 1.0 for k in kept)   # verified only
    for pid in {k["problem_id"] for k in kept}:
        texts = [solution_key(k["solution"]) for k in kept if k["problem_id"] == pid]
        assert len(texts) == len(set(texts)) <= 2
    assert m["learner/policy_examples"] == len(kept) and m["learner/policy_steps"] >= 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary[-1]["tokens_cumulative"] == rows[2]["tokens_cumulative"]
