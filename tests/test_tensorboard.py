"""launch/tracking.py with tracking.backend: tensorboard: a Tracker driven for two rounds (no training, no Ray),
its event files read back with TensorBoard's EventAccumulator; and the config key."""
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from launch.tracking import SAMPLES_KEY, TENSORBOARD_DIR, Tracker, samples_markdown
from rl.config import ConfigError, from_dict


def _read(run_dir):
    acc = EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _text(acc, tag):
    return {e.step: e.tensor_proto.string_val[0].decode() for e in acc.Tensors(f"{tag}/text_summary")}


def test_tensorboard_backend_writes_scalars_per_round_and_the_sample_table(tmp_path):
    tracker = Tracker(tmp_path, {"seed": 0, "tracking": {"backend": "tensorboard"}}, mode="offline",
                      project="arbor-test", entity=None, backend="tensorboard")
    assert tracker.run is None            # no W&B run beside it
    for r in (0, 1):
        tracker.log({"eval/greedy_acc": 0.25 + 0.5 * r, "learner/policy_loss": np.float32(2.0 - r),
                     "tokens/cumulative": np.int64(1000 * (r + 1)), "search/mean_depth": 3,
                     "policy_version": r, "eval/method": "mcts", "flag": True, "none": None}, step=r)
        tracker.log_samples([{"question": f"{r} + 2 = ?", "trajectory": "2 + 2 = 4\n= 4", "answer": "4",
                              "reward": 1.0, "value": 0.8125, "gold": "4", "id": f"p{r}"},
                             {"question": "7 | 1", "answer": "8", "reward": 0.0, "value": None, "gold": "8"}],
                            step=r)
    tracker.finish()

    acc = _read(tmp_path)
    scalars = set(acc.Tags()["scalars"])
    assert {"eval/greedy_acc", "learner/policy_loss", "tokens/cumulative", "search/mean_depth", "policy_version",
            "round"} <= scalars
    assert not {"eval/method", "flag", "none"} & scalars       # strings, bools and None are not plotted
    acc_vals = [(e.step, e.value) for e in acc.Scalars("eval/greedy_acc")]
    assert acc_vals == [(0, pytest.approx(0.25)), (1, pytest.approx(0.75))]
    assert [(e.step, e.value) for e in acc.Scalars("learner/policy_loss")] == [(0, 2.0), (1, 1.0)]
    assert [(e.step, e.value) for e in acc.Scalars("tokens/cumulative")] == [(0, 1000.0), (1, 2000.0)]
    assert [e.value for e in acc.Scalars("round")] == [0.0, 1.0]

    texts = _text(acc, SAMPLES_KEY)
    assert sorted(texts) == [0, 1]
    lines = texts[1].splitlines()
    assert lines[0] == "| question | trajectory | answer | reward | value | gold | id |"
    assert lines[2] == "| 1 + 2 = ? | 2 + 2 = 4<br>= 4 | 4 | 1 | 0.8125 | 4 | p1 |"
    assert lines[3] == "| 7 \\| 1 |  | 8 | 0 |  | 8 |  |"   # a pipe escaped, missing keys empty
    assert '"backend": "tensorboard"' in _text(acc, "config")[0]


def test_resumed_tensorboard_run_continues_the_same_folder(tmp_path):
    for r in (0, 1):   # two Trackers on one run_dir, as a resumed run makes
        t = Tracker(tmp_path, {}, mode="disabled", project="p", entity=None, backend="tensorboard")
        t.log({"eval/greedy_acc": 0.1 * (r + 1)}, step=r)
        t.finish()
    assert [e.step for e in _read(tmp_path).Scalars("eval/greedy_acc")] == [0, 1]


def test_samples_markdown_orders_the_columns_like_the_wandb_table():
    md = samples_markdown([{"id": "a", "answer": "3", "question": "1 + 2 = ?"}])
    assert md.splitlines() == ["| question | trajectory | answer | reward | value | id |", "|---|---|---|---|---|---|",
                               "| 1 + 2 = ? |  | 3 |  |  | a |"]


def test_tracking_backend_key_is_typed():
    assert from_dict({"run_dir": "r"}, where="t.yaml").tracking.backend == "wandb"   # existing configs unchanged
    assert from_dict({"run_dir": "r", "tracking": {"backend": "tensorboard"}}, where="t.yaml").tracking.backend \
        == "tensorboard"
    with pytest.raises(ConfigError, match="tracking.backend"):
        from_dict({"run_dir": "r", "tracking": {"backend": "tb"}}, where="t.yaml")
    with pytest.raises(ValueError, match="tracking.backend"):
        Tracker(None, {}, mode="disabled", project="p", entity=None, backend="tb")
