"""scripts/summary_table.py: the README's per-round table is made from summary.json, not typed."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_table_from_a_summary(tmp_path):
    rows = [{"round": 0, "greedy_acc": 0.285, "search_acc": 0.265, "train_solved": float("nan"), "value_ece": 0.28,
             "tokens_cumulative": 0, "seconds": 91.44},
            {"round": 1, "greedy_acc": 0.47, "search_acc": 0.505, "train_solved": 0.408, "auc_within_value": 0.839,
             "value_ece": 0.085, "search_distinct_children": 1.485, "tokens_cumulative": 108468, "seconds": 144.0}]
    (tmp_path / "summary.json").write_text(json.dumps(rows))
    out = subprocess.run([sys.executable, str(ROOT / "scripts/summary_table.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(out) == 4 and out[0].startswith("| round | greedy_acc | search_acc (MCTS) |")
    assert out[2] == "| 0 (bootstrap) | 0.285 | 0.265 | – | – | 0.280 | – | 0 | 91.4 |"
    assert out[3] == "| 1 | 0.470 | 0.505 | 0.408 | 0.839 | 0.085 | 1.485 | 108,468 | 144.0 |"


def test_astar_and_multi_path_columns_appear_when_the_run_has_them(tmp_path):
    rows = [{"round": 0, "greedy_acc": 0.3, "search_acc": 0.3, "astar_acc": 0.25},
            {"round": 1, "greedy_acc": 0.5, "search_acc": 0.6, "astar_acc": 0.55, "search_multi_path": 0.75}]
    (tmp_path / "summary.json").write_text(json.dumps(rows))
    out = subprocess.run([sys.executable, str(ROOT / "scripts/summary_table.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].startswith("| round | greedy_acc | search_acc (MCTS) | astar_acc |")
    assert "trees with > 1 complete path" in out[0]
    assert out[3].split(" | ")[3] == "0.550" and "0.750" in out[3]


def test_a_run_without_summary_is_named(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts/summary_table.py"), str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "summary.json" in out.stderr
