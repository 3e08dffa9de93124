"""Print a run's per-round results (RUN_DIR/summary.json) as the Markdown table the README shows.

    python scripts/summary_table.py runs/arithmetic
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

COLUMNS = [("round", "round"), ("greedy_acc", "greedy_acc"), ("search_acc", "search_acc (MCTS)"),
           ("astar_acc", "astar_acc"),
           ("train_solved", "train prompts solved by search"), ("auc_within_value", "V AUC within problem"),
           ("value_ece", "V ECE"), ("search_distinct_children", "distinct children / expansion"),
           ("search_multi_path", "trees with > 1 complete path"),
           ("tokens_cumulative", "generated tokens"), ("seconds", "seconds")]


def cell(key: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if key == "round" and value == 0:
        return "0 (bootstrap)"
    if key == "tokens_cumulative":
        return f"{value:,}"
    if key == "seconds":
        return f"{value:.1f}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


OPTIONAL = {"astar_acc", "search_multi_path"}  # shown when some round has them (loop.eval_methods, newer runs)


def table(rows: list[dict]) -> str:
    cols = [(k, h) for k, h in COLUMNS if k not in OPTIONAL or any(k in r for r in rows)]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(k, r.get(k)) for k, _ in cols) + " |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python scripts/summary_table.py RUN_DIR")
    path = Path(sys.argv[1]) / "summary.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no summary.json (has the run finished a round?)")
    print(table(json.loads(path.read_text())))
