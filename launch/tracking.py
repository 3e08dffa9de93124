"""Metrics out: W&B (online, offline or disabled), summary.json, and the console."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

SUMMARY_KEYS = ("round", "greedy_acc", "search_acc", "policy_version", "seconds")


class Tracker:
    def __init__(self, run_dir: Path, cfg_dict: dict, *, mode: str, project: str, entity: str | None):
        self.run_dir = run_dir
        self.run = None
        if mode != "disabled":
            import wandb
            id_file = run_dir / "wandb_id"
            run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
            id_file.write_text(run_id)
            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(project=project, entity=entity, mode=mode, dir=str(run_dir), id=run_id,
                                  resume="allow", config=cfg_dict, name=run_dir.name)

    def log(self, metrics: dict, step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_html(self, pages: dict[str, str], step: int) -> None:
        if self.run is not None and pages:
            import wandb
            self.run.log({k: wandb.Html(v, inject=False) for k, v in pages.items()}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


def write_summary(run_dir: Path, rows: list[dict]) -> None:
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(rows, indent=1))
    tmp.replace(run_dir / "summary.json")


def format_table(rows: list[dict]) -> str:
    """Per-round results as a fixed-width text table."""
    cols = ["round", "greedy_acc", "search_acc", "train_solved", "value_ece", "policy_version", "seconds"]
    head = " | ".join(f"{c:>14}" for c in cols)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:>14.3f}" if isinstance(v, float) else f"{v!s:>14}")
        lines.append(" | ".join(cells))
    return "\n".join(lines)
