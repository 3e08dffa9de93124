"""launch/tracking.py: the console's phase line and ETA, the eval samples' rows, and a Tracker in W&B offline
mode read back with `wandb leet inspect` (no training, no Ray)."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

from launch.tracking import (METRIC_GROUPS, SAMPLE_COLUMNS, SAMPLES_KEY, Tracker, eval_sample_rows, fmt_duration,
                             phase_line, phases)
from rl.tasks.base import Problem

ROUND_3 = {"time/search": 41.2, "time/value_train": 5.0, "time/q_train": 3.1, "time/policy_train": 5.0,
           "time/push": 0.3, "time/eval_greedy": 4.0, "time/eval_search": 8.4,
           "time/eval_mcts": 8.0,          # already inside time/eval_search: not counted again
           "time/rollout_idle": 30.0,      # the actors' idle time, not a phase of the round
           "time/round": 66.0, "learner/policy_loss": 0.5}


def test_phase_line_names_each_phase_and_the_eta():
    line = phase_line(3, 6, ROUND_3, [70.0, 62.0, 66.0])   # mean 66 s x 3 rounds left = 198 s
    assert line == ("round 3/6: search 41.2s, critics 8.1s, policy 5.0s, push 0.3s, eval 12.4s "
                    "| 66.0s this round, ETA 3m18s")


def test_phase_line_skips_missing_phases_and_handles_the_ends():
    boot = {"bootstrap/policy_train": 12.0, "time/push": 0.5, "time/eval_greedy": 2.0, "time/eval_search": 1.0,
            "time/round": 16.0}
    assert phases(boot) == [("bootstrap", 12.0), ("push", 0.5), ("eval", 3.0)]
    # round 0 has no searched round to estimate from
    assert phase_line(0, 4, boot, []) == "round 0/4: bootstrap 12.0s, push 0.5s, eval 3.0s | 16.0s this round, ETA n/a"
    assert phase_line(4, 4, ROUND_3, [66.0] * 4).endswith("66.0s this round, ETA done")
    imagined = {"time/learner_idle": 1.0, "time/imagination": 2.0, "time/search": 3.0, "time/dpo_train": 4.0}
    assert [p for p, _ in phases(imagined)] == ["wait", "imagination", "search", "dpo"]
    assert phase_line(1, 3, imagined, [10.0]).endswith("| ETA 20s")


def test_fmt_duration():
    assert [fmt_duration(s) for s in (0.4, 41.2, 60, 198, 3599, 3600, 7500)] == \
        ["0s", "41s", "1m00s", "3m18s", "59m59s", "1h00m", "2h05m"]


def test_eval_sample_rows_match_questions_by_id():
    from rl.rollout import EvalRecord
    problems = [Problem(id=f"p{i}", question=f"{i} + 1 = ?", answer=str(i + 1)) for i in range(10)]
    records = [EvalRecord(id=f"p{i}", prediction=str(i + 1 if i % 2 else i), gold=str(i + 1), correct=bool(i % 2),
                          tokens=5, seconds=0.1, reward=float(i % 2), value=0.25, solution=f"{i} + 1 = {i + 1}\n" if i else "")
               for i in reversed(range(10))]
    rows = eval_sample_rows(problems, records, 8)
    assert len(rows) == 8
    assert rows[0] == {"question": "9 + 1 = ?", "trajectory": "9 + 1 = 10\n", "answer": "10", "reward": 1.0, "value": 0.25,
                       "gold": "10", "correct": True, "id": "p9"}
    assert all(r["question"] == f"{r['id'][1:]} + 1 = ?" for r in rows)
    assert len(eval_sample_rows(problems, records[:3])) == 3
    assert eval_sample_rows(problems, records, 10)[-1]["trajectory"] is None   # no steps chosen: none shown


def _inspect(run_path: Path) -> list[dict]:
    exe = shutil.which("wandb") or str(Path(sys.executable).with_name("wandb"))
    out = subprocess.run([exe, "leet", "inspect", "--json", str(run_path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_offline_tracker_declares_the_axes_and_logs_rounds_and_samples(tmp_path):
    tracker = Tracker(tmp_path, {"seed": 0}, mode="offline", project="arbor-test", entity=None)
    rows = [{"question": "2 + 3 = ?", "trajectory": None, "answer": "5", "reward": 1.0, "value": 0.8,
             "gold": "5", "correct": True},
            {"question": "4 - 1 = ?", "trajectory": None, "answer": "2", "reward": 0.0, "value": float("nan"),
             "gold": "3", "correct": False}]
    for r in (0, 1):
        tracker.log_samples(rows, step=r)
        tracker.log({"eval/greedy_acc": 0.25 + 0.5 * r, "critic/value_auc_within": 0.6 + 0.1 * r,
                     "tokens/generated": 100, "tokens/cumulative": 100 * r, "time/search": 3.0}, step=r)
    tracker.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = _inspect(runs[0])

    metrics = [rec["metric"] for rec in records if rec.get("type") == "metric"]
    by_glob = {m["glob_name"]: m.get("step_metric") for m in metrics if "glob_name" in m}
    by_name = {m["name"]: m.get("step_metric") for m in metrics if "name" in m}
    assert "round" in by_name and by_name["round"] is None                 # the axis itself
    assert by_name.get("tokens/cumulative") == "round"
    assert by_glob == {f"{g}/*": "round" for g in METRIC_GROUPS}
    assert {"eval", "learner", "critic", "search", "rollout", "time", "perf", "tokens", "async",
            "bootstrap"} <= set(METRIC_GROUPS)

    history = [rec["history"]["item"] for rec in records if rec.get("type") == "history"]
    assert [h["_step"] for h in history] == [0, 1]
    assert [h["round"] for h in history] == [0, 1]                          # the axis has data each round
    assert [h["eval/greedy_acc"] for h in history] == [0.25, 0.75]
    assert [h["tokens/cumulative"] for h in history] == [0, 100]
    assert all({"critic/value_auc_within", "time/search"} <= set(h) for h in history)
    assert all(h[f"{SAMPLES_KEY}._type"] == "table-file" and h[f"{SAMPLES_KEY}.nrows"] == 2 for h in history)

    table = json.loads((runs[0] / "files" / history[0][f"{SAMPLES_KEY}.path"]).read_text())
    assert table["columns"] == [*SAMPLE_COLUMNS, "gold", "correct"]
    assert table["data"][0] == ["2 + 3 = ?", None, "5", 1.0, 0.8, "5", True]
    assert math.isnan(table["data"][1][4])


def test_disabled_tracker_logs_nothing(tmp_path):
    tracker = Tracker(tmp_path, {}, mode="disabled", project="arbor-test", entity=None)
    tracker.log({"eval/greedy_acc": 1.0}, step=0)
    tracker.log_samples([{"question": "q"}], step=0)
    tracker.finish()
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "wandb_id").exists()

