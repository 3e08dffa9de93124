"""Metrics out: W&B (online, offline or disabled) or TensorBoard (tracking.backend), summary.json, and the
console."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

SUMMARY_KEYS = ("round", "greedy_acc", "search_acc", "policy_version", "seconds")

# the W&B step axes: every logged dict carries `round` (Tracker.log adds it); tokens/cumulative (every token the
# policy generated for training data so far) is logged each round too, so any panel can take it as its x-axis
ROUND_AXIS = "round"
TOKENS_AXIS = "tokens/cumulative"
# the metric groups, each plotted against `round`. define_metric takes one step_metric per key (a later
# call for the same key replaces it), so eval/* is on `round` too; plot it against tokens/cumulative by
# choosing that x-axis in the panel (both are in every round's dict)
METRIC_GROUPS = ("eval", "learner", "critic", "search", "rollout", "time", "perf", "tokens", "async",
                 "bootstrap", "rft", "imagination", "replay")
SAMPLES_KEY = "eval/samples"
SAMPLE_COLUMNS = ("question", "trajectory", "answer", "reward", "value")
TENSORBOARD_DIR = "tensorboard"   # under run_dir, for tracking.backend: tensorboard
TRANSACTION_FLUSH_S = 0.1         # W&B writes what it was sent to disk this often: a kill loses at most that


def _sample_columns(rows: list[dict]) -> list[str]:
    return list(SAMPLE_COLUMNS) + [k for k in rows[0] if k not in SAMPLE_COLUMNS]


def _md_cell(v) -> str:
    text = "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
    return text.replace("|", "\\|").replace("\n", "<br>")


def samples_markdown(rows: list[dict]) -> str:
    """The sample table as a Markdown table (TensorBoard's text plugin renders it): the columns of log_samples."""
    columns = _sample_columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_md_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


class Tracker:
    """backend "wandb": a W&B run in `mode` (disabled: none). backend "tensorboard": a SummaryWriter on
    run_dir/tensorboard; log writes every numeric metric as a scalar with the round as its step (other
    values are skipped), log_samples the table as Markdown text under eval/samples, log_html nothing (W&B
    only). A resumed run adds a new event file to the same folder; TensorBoard merges them by step."""

    def __init__(self, run_dir: Path, cfg_dict: dict, *, mode: str, project: str, entity: str | None,
                 backend: str = "wandb"):
        if backend not in ("wandb", "tensorboard"):
            raise ValueError(f"tracking.backend = {backend!r}: use wandb or tensorboard")
        self.run_dir = run_dir
        self.run = None
        self.tb = None
        if backend == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD_DIR))
            self.tb.add_text("config", "```\n" + json.dumps(cfg_dict, indent=1, default=str) + "\n```", 0)
        elif mode != "disabled":
            import wandb
            id_file = run_dir / "wandb_id"
            run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
            id_file.write_text(run_id)
            os.environ.setdefault("WANDB_SILENT", "true")
            # the .wandb file is written every TRANSACTION_FLUSH_S (W&B's default 15 s lost every round of a
            # tiny run whose driver was SIGKILLed: tests/fault/test_driver_killed.py)
            self.run = wandb.init(project=project, entity=entity, mode=mode, dir=str(run_dir), id=run_id,
                                  resume="allow", config=cfg_dict, name=run_dir.name,
                                  settings=wandb.Settings(x_transaction_log_flush_interval=TRANSACTION_FLUSH_S))
            self._define_axes()

    def _define_axes(self) -> None:
        """`round` and tokens/cumulative as step axes; every metric group against `round` (a resumed run
        declares them again: define_metric merges with the earlier calls)."""
        self.run.define_metric(ROUND_AXIS)
        self.run.define_metric(TOKENS_AXIS, step_metric=ROUND_AXIS)  # an axis, itself charted per round
        for group in METRIC_GROUPS:
            self.run.define_metric(f"{group}/*", step_metric=ROUND_AXIS)

    def log(self, metrics: dict, step: int) -> None:
        if self.tb is not None:
            for k, v in metrics.items():
                if _is_scalar(v):
                    self.tb.add_scalar(k, float(v), global_step=step)
            self.tb.add_scalar(ROUND_AXIS, float(step), global_step=step)
            self.tb.flush()
        if self.run is not None:
            # commit: the round's row is complete (the trees and samples of this step came first); uncommitted,
            # it waited in memory for the next step's first log and a driver killed before then lost it
            self.run.log({**metrics, ROUND_AXIS: step}, step=step, commit=True)

    def log_html(self, pages: dict[str, str], step: int) -> None:
        if self.run is not None and pages:
            import wandb
            self.run.log({**{k: wandb.Html(v, inject=False) for k, v in pages.items()}, ROUND_AXIS: step}, step=step)

    def log_samples(self, rows: list[dict], step: int) -> None:
        """A wandb.Table of sample problems under eval/samples: the SAMPLE_COLUMNS, then any other keys of
        the rows (in the first row's order); a key a row lacks is None."""
        if not rows:
            return
        if self.tb is not None:
            self.tb.add_text(SAMPLES_KEY, samples_markdown(rows), global_step=step)
            self.tb.flush()
        if self.run is None:
            return
        import wandb
        columns = _sample_columns(rows)
        table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows],
                            allow_mixed_types=True)
        self.run.log({SAMPLES_KEY: table, ROUND_AXIS: step}, step=step)

    def finish(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.run is not None:
            self.run.finish()


def _is_scalar(v) -> bool:
    """A Python or numpy int or float (bools, strings, lists and None are not plotted)."""
    import numpy as np
    if isinstance(v, (bool, np.bool_)):
        return False
    return isinstance(v, (int, float, np.integer, np.floating))


def eval_sample_rows(problems: list, records: list, n: int = 8) -> list[dict]:
    """Rows for Tracker.log_samples from the first n evaluation records (rl.rollout.EvalRecord) and the
    problems they were evaluated on (matched by id): the chosen trajectory (the record's solution), the
    extracted answer, the task's reward, V's score of the whole solution, the gold answer and the verdict."""
    questions = {p.id: p.question for p in problems}
    return [{"question": questions.get(x.id), "trajectory": x.solution or None, "answer": x.prediction, "reward": x.reward,
             "value": x.value, "gold": x.gold, "correct": x.correct, "id": x.id} for x in records[:n]]


def fmt_duration(seconds: float) -> str:
    """41s, 3m18s, 2h05m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


_LEARNER_PHASES = ("policy_train", "dpo_train")   # the other time/*_train keys are the critics'


def phases(metrics: dict) -> list[tuple[str, float]]:
    """(phase, seconds) of one round from its time/* metrics (and bootstrap/policy_train in round 0), in
    the order they run; a phase with no key is left out. critics sums every critic's time/NAME_train; eval
    is time/eval_greedy + time/eval_search (the latter holds the loop.eval_methods' time/eval_METHOD)."""
    out = []

    def add(name, keys):
        vals = [metrics[k] for k in keys if k in metrics]
        if vals:
            out.append((name, float(sum(vals))))

    add("bootstrap", ["bootstrap/policy_train"])
    add("wait", ["time/learner_idle"])
    add("imagination", ["time/imagination"])
    add("search", ["time/search"])
    add("critics", [k for k in metrics if k.startswith("time/") and k.endswith("_train")
                    and k[len("time/"):] not in _LEARNER_PHASES])
    add("policy", ["time/policy_train"])
    add("dpo", ["time/dpo_train"])
    add("push", ["time/push"])
    add("eval", ["time/eval_greedy", "time/eval_search"])
    return out


def phase_line(r: int, rounds: int, metrics: dict, seconds_so_far: list[float]) -> str:
    """The console line of round r of rounds: each phase's time, the round's time (time/round) and the ETA
    of the run: the mean of seconds_so_far (the seconds of every searched round so far, round 0's
    bootstrap left out) times the rounds left."""
    parts = ", ".join(f"{name} {sec:.1f}s" for name, sec in phases(metrics))
    line = f"round {r}/{rounds}: {parts or 'no phases timed'}"
    if "time/round" in metrics:
        line += f" | {float(metrics['time/round']):.1f}s this round"
    left = max(rounds - r, 0)
    if left == 0:
        eta = "done"
    elif seconds_so_far:
        eta = fmt_duration(sum(seconds_so_far) / len(seconds_so_far) * left)
    else:
        eta = "n/a"
    return f"{line}, ETA {eta}" if "time/round" in metrics else f"{line} | ETA {eta}"


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
