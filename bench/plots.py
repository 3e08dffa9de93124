"""The results page: every benchmark's table and plot on one page, docs/results/README.md.

    python bench/plots.py                         # reads docs/results/*.json, writes docs/results/*.png + README.md
    python bench/plots.py --summary runs/x/summary.json --results-dir /tmp/r   # another run, another folder

Needs matplotlib (`pip install -c requirements/lock.txt -e ".[bench]"`); a few seconds. Measures nothing: it
reads the committed JSONs the benches wrote and draws (Agg backend, no display):

  learning_curve.png    greedy / search / A* held-out accuracy per round of one run's summary.json (--summary,
                        default the seed-0 search run of bench/search_vs_rft.py, the README main job's figures;
                        skipped with a note when absent: runs/ is not committed)
  self_improvement.png  greedy, ηMCTS and A* per round (self_improvement.json)
  search_quality.png    accuracy against mean generated tokens, one line per method (search_quality.json rows)
  search_vs_rft.png     the search loop against RFT: accuracy against cumulative tokens and against wall seconds,
                        every seed (search_vs_rft.json)
  engine.png            engine tokens/s against naive generation and batched model.generate (engine.json)
  scaling.png           rollout throughput with 1 and 2 actors; sync against async training (scaling.json)
  publish_latency.png   weight-publish latency per transport against model size (scaling.json's publish part)
  learner_overhead.png  DeepSpeed step / torch AdamW step per ZeRO stage and rank count (learner_overhead.json,
                        when present)

The page embeds every .md table of the folder under a heading, and gives each plot a caption naming the JSON
it came from, the command that measured it, the date, the commit, the package versions and the machine (from
the JSON's provenance fields, bench/provenance.py; where a JSON lacks them the caption says so). The date is
the JSON's own `date` field if it has one, else the date of the git commit that last changed the file.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SUMMARY = ROOT / "runs" / "search_vs_rft" / "search_seed0" / "summary.json"
METHOD_LABEL = {"greedy": "greedy", "sc": "self-consistency", "bon": "best-of-N (verifier)", "mcts": "ηMCTS",
                "astar": "A*", "beam": "beam", "prm_beam": "PRM beam", "qstar": "Q*"}
# The command that measures each JSON when the JSON does not record its own (from each bench's docstring).
DEFAULT_COMMAND = {
    "search_vs_rft": "python bench/search_vs_rft.py --seeds 0,1",
    "search_quality": "python bench/search_quality.py --checkpoint {checkpoint} --n {n}",
    "critic_quality": "python bench/critic_quality.py",
    "self_improvement": "python bench/self_improvement.py",
    "engine": "python bench/engine.py",
    "scaling": "python bench/scaling.py",
    "learner_overhead": "python bench/learner_overhead.py",
}


class ResultError(ValueError):
    pass


def load(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ResultError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def need(d, key, path: Path):
    """d[key], or one error naming the file and the key."""
    if not isinstance(d, dict) or key not in d:
        raise ResultError(f"{path}: no field {key!r}")
    return d[key]


def _git(cwd: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def file_date(path: Path, d) -> str:
    if isinstance(d, dict) and d.get("date"):
        return str(d["date"])
    date = _git(path.parent, "log", "-1", "--format=%cs", "--", path.name)
    return f"{date} (the commit that last changed the file)" if date else "not recorded (file not committed)"


def provenance(path: Path, d) -> dict:
    """commit, versions, machine, command and date of one result file, each from the file where it has it.
    Older JSONs keep versions in a `machine` dict and no commit: taken as they are, and the gaps named."""
    p = {"file": path.name, "date": file_date(path, d)}
    src = d if isinstance(d, dict) else {}
    p["commit"] = src.get("commit")
    versions = src.get("versions")
    machine = src.get("machine")
    if versions is None and isinstance(machine, dict):
        versions = {k: machine[k] for k in ("python", "torch", "transformers", "deepspeed", "ray", "numpy")
                    if k in machine}
    p["versions"] = versions or None
    if isinstance(machine, dict):
        cores = machine.get("cores")
        gpu = machine.get("gpu")
        machine = ", ".join(str(x) for x in (machine.get("cpu"), f"{cores} CPU cores" if cores else None,
                                               None if gpu is None else ("GPU" if gpu else "no GPU")) if x)
    p["machine"] = machine or None
    command = src.get("command")
    if not command:
        template = DEFAULT_COMMAND.get(path.stem)
        if template:
            try:
                command = template.format(**src)
            except (KeyError, IndexError):
                command = template.split(" --")[0]
    p["command"] = command.strip() if command else None
    p["note"] = src.get("note")
    return p


def caption(p: dict, lead: str = "From") -> str:
    parts = [f"{lead} `{p['file']}`"]
    parts.append(f"measured by `{p['command']}`" if p["command"] else "command not recorded")
    parts.append(f"date {p['date']}")
    parts.append(f"commit `{p['commit']}`" if p["commit"] else "**the JSON records no commit**")
    if p["versions"]:
        parts.append("versions " + ", ".join(f"{k} {v}" for k, v in p["versions"].items()))
    else:
        parts.append("**the JSON records no package versions**")
    if p["machine"]:
        parts.append(f"machine: {p['machine']}")
    return "; ".join(parts) + "."


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _save(fig, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _rounds(d, path: Path) -> list[dict]:
    rows = d.get("rounds") if isinstance(d, dict) else d
    if not isinstance(rows, list) or not rows:
        raise ResultError(f"{path}: expected a list of rounds (or a dict with 'rounds')")
    for i, r in enumerate(rows):
        for k in ("round", "greedy_acc"):
            if not isinstance(r, dict) or k not in r:
                raise ResultError(f"{path}: round entry {i} has no field {k!r}")
    return rows


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))


def plot_rounds(rows, series, title, out: Path, x="round", xlabel="round") -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for key, label, style in series:
        pts = [(r[x], r[key]) for r in rows if _finite(r.get(key)) and _finite(r.get(x))]
        if pts:
            ax.plot(*zip(*pts), style, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("held-out accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out)


def plot_learning_curve(summary: Path, out_dir: Path, svr) -> tuple[Path, str] | None:
    if not summary.exists():
        print(f"plots: {_rel(summary)} not found: learning_curve.png skipped (runs/ is not committed; train the "
              "main job or pass --summary)")
        return None
    rows = _rounds(load(summary), summary)
    series = [("greedy_acc", "greedy", "o-"), ("search_acc", "search (the run's search.method)", "s-"),
              ("mcts_acc", "ηMCTS", "s-"), ("astar_acc", "A*", "^-")]
    png = plot_rounds(rows, series, "Learning curve per round", out_dir / "learning_curve.png")
    note = (f"From `{_rel(summary)}`, one run's per-round summary (greedy accuracy on the held-out problems and the "
            "search method the run's config names; A* where the run evaluated it). summary.json records no "
            "commit or versions.")
    if svr is not None:
        for seed in svr[1].get("seeds", []):
            search_rounds = seed.get("rounds", {}).get("search", [])
            if [r.get("greedy_acc") for r in search_rounds] == [r.get("greedy_acc") for r in rows]:
                note += (f" Its rounds are those of seed {seed.get('seed')}'s search run in search_vs_rft.json "
                         f"(ηMCTS with the generative verifier, configs/arithmetic.yaml): "
                         f"{caption(svr[0])}")
                break
    return png, note


def plot_self_improvement(path: Path, d, out_dir: Path) -> Path:
    rows = _rounds(d, path)
    series = [("greedy_acc", "greedy", "o-"), ("mcts_acc", "ηMCTS", "s-"), ("astar_acc", "A*", "^-")]
    return plot_rounds(rows, series, "Self-improvement per round", out_dir / "self_improvement.png")


def plot_search_quality(path: Path, d, out_dir: Path) -> Path:
    rows = need(d, "rows", path) if isinstance(d, dict) else d
    by_method: dict[tuple, list] = {}
    for i, r in enumerate(rows):
        for k in ("method", "accuracy", "mean_tokens"):
            if k not in r:
                raise ResultError(f"{path}: row {i} has no field {k!r}")
        critics = r.get("critics", "trained")
        key = (r["method"], "rule" if critics == "rule" else "")
        by_method.setdefault(key, []).append((r["mean_tokens"], r["accuracy"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (method, rule), pts in sorted(by_method.items()):
        pts = sorted(set(pts))
        label = METHOD_LABEL.get(method, method) + (" (rule critic)" if rule else "")
        ax.plot(*zip(*pts), "o" + (":" if rule else "-"), label=label)
    ax.set_xscale("log")
    ax.set_xlabel("mean generated tokens per problem (log)")
    ax.set_ylabel("accuracy")
    title = "Accuracy against generated tokens"
    if isinstance(d, dict) and d.get("n"):
        title += f" ({d['n']} held-out problems)"
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, out_dir / "search_quality.png")


def plot_search_vs_rft(path: Path, d, out_dir: Path) -> Path:
    seeds = need(d, "seeds", path)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colors = {"search": "tab:blue", "rft": "tab:orange"}
    styles = ["-", "--", ":", "-."]
    for si, seed in enumerate(seeds):
        rounds = need(seed, "rounds", path)
        for method in ("search", "rft"):
            rows = need(rounds, method, path)
            label = f"{'search loop' if method == 'search' else 'RFT'}, seed {seed.get('seed', si)}"
            for ax, x in zip(axes, ("tokens", "seconds")):
                pts = [(r[x], r["greedy_acc"]) for r in rows if x in r and "greedy_acc" in r]
                if pts:
                    ax.plot(*zip(*pts), "o" + styles[si % len(styles)], color=colors[method], label=label,
                            markersize=4)
    axes[0].set_xlabel("cumulative generated tokens (training data)")
    axes[1].set_xlabel("wall seconds (cumulative)")
    axes[0].set_ylabel("held-out greedy accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].set_title("Search loop vs RFT at equal tokens")
    axes[1].set_title("... and at equal wall time")
    axes[1].legend(fontsize=8)
    return _save(fig, out_dir / "search_vs_rft.png")


ENGINE_BACKENDS = [("naive", "naive (generate per node)"), ("engine_sequential", "engine, sequential"),
                   ("engine", "engine, threads"), ("batched_generate", "batched model.generate")]


def plot_engine(path: Path, d, out_dir: Path) -> Path:
    sizes = need(d, "sizes", path)
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.2 * len(sizes), 4), squeeze=False)
    for ax, (name, s) in zip(axes[0], sizes.items()):
        labels, values, lo, hi = [], [], [], []
        for key, label in ENGINE_BACKENDS:
            if key not in s:
                continue
            b = s[key]
            v = need(b, "tokens_per_s", path)
            r = b.get("tokens_per_s_range", [v, v])
            labels.append(label)
            values.append(v)
            lo.append(v - r[0])
            hi.append(r[1] - v)
        if not values:
            raise ResultError(f"{path}: sizes.{name} has none of {[k for k, _ in ENGINE_BACKENDS]}")
        bars = ax.bar(range(len(values)), values, yerr=[lo, hi], capsize=4,
                      color=["tab:gray", "tab:cyan", "tab:blue", "tab:orange"][: len(values)])
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.set_xticks(range(len(values)), labels, rotation=20, ha="right", fontsize=8)
        params = s.get("params")
        ax.set_title(f"{name}" + (f" ({params / 1e6:.2f}M params)" if params else ""))
        ax.set_ylabel("generated tokens / s")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Engine throughput under MCTS (median over rounds, bars: range)")
    return _save(fig, out_dir / "engine.png")


def plot_scaling(path: Path, d, out_dir: Path) -> Path:
    rollout = need(d, "rollout", path)
    median = need(rollout, "median", path)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ax = axes[0]
    actors = sorted(median, key=int)
    pps = [median[a]["problems_per_s"] for a in actors]
    ax.plot([int(a) for a in actors], pps, "o-", label="measured (median)")
    for a, runs in rollout.get("runs", {}).items():
        ax.plot([int(a)] * len(runs), [r["problems_per_s"] for r in runs], "x", color="tab:gray")
    ax.plot([int(a) for a in actors], [pps[0] * int(a) / int(actors[0]) for a in actors], "k:", label="linear")
    ax.set_xticks([int(a) for a in actors])
    ax.set_xlabel("rollout actors")
    ax.set_ylabel("problems searched / s")
    ax.set_title("Rollout scaling (x: each repeat)")
    ax.legend()
    ax.grid(alpha=0.3)
    ax = axes[1]
    loop = d.get("loop") or {}
    modes = [m for m in ("sync", "async") if m in loop]
    if modes:
        vals = [loop[m]["prompts_per_s"] for m in modes]
        bars = ax.bar(modes, vals, color=["tab:gray", "tab:blue"][: len(modes)])
        ax.bar_label(bars, fmt="%.2f")
        ax.set_ylabel("train prompts / s (rounds 1..R)")
        ax.set_title("Training loop: sync against async")
        ax.grid(alpha=0.3, axis="y")
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no loop measurement in the JSON", ha="center")
    return _save(fig, out_dir / "scaling.png")


PUBLISH_LABEL = {"raw": "raw broadcast (floor)", "object_store": "object store", "collective": "collective (flat)",
                 "collective_separate": "collective (separate tensors)", "object_store_copy": "object store + copy"}


def plot_publish(path: Path, d, out_dir: Path) -> Path | None:
    pub = d.get("publish", d) if isinstance(d, dict) else None
    sizes = pub.get("sizes") if isinstance(pub, dict) else None
    if not isinstance(sizes, dict) or not sizes:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    transports = sorted({t for s in sizes.values() for t in need(s, "seconds", path)},
                        key=lambda t: list(PUBLISH_LABEL).index(t) if t in PUBLISH_LABEL else 99)
    for t in transports:
        pts = sorted((need(s, "params", path), s["seconds"][t]) for s in sizes.values() if t in s["seconds"])
        ax.plot(*zip(*pts), "k:o" if t == "raw" else "o-", label=PUBLISH_LABEL.get(t, t))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("model size (parameters, float32)")
    ax.set_ylabel("publish latency, s (median)")
    receivers = (pub.get("setup") or {}).get("receivers")
    ax.set_title("Weight publish latency" + (f", 1 sender -> {receivers} receivers" if receivers else ""))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, out_dir / "publish_latency.png")


def plot_learner_overhead(path: Path, d, out_dir: Path) -> Path:
    rows = d.get("rows") if isinstance(d, dict) else d
    if not isinstance(rows, list) or not rows:
        raise ResultError(f"{path}: expected a list of rows (or a dict with 'rows')")
    for i, r in enumerate(rows):
        for k in ("zero_stage", "ranks", "ratio"):
            if k not in r:
                raise ResultError(f"{path}: row {i} has no field {k!r}")
    stages = sorted({r["zero_stage"] for r in rows})
    ranks = sorted({r["ranks"] for r in rows})
    fig, ax = plt.subplots(figsize=(6.4, 4))
    width = 0.8 / len(ranks)
    for j, n in enumerate(ranks):
        xs, ys = [], []
        for r in rows:
            if r["ranks"] == n and _finite(r["ratio"]):
                xs.append(stages.index(r["zero_stage"]) + (j - (len(ranks) - 1) / 2) * width)
                ys.append(r["ratio"])
        bars = ax.bar(xs, ys, width, label=f"{n} rank{'s' if n != 1 else ''}")
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.axhline(1.15, color="k", ls=":", label="goal 1.15x (ZeRO-0/1/2, 1 rank)")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks(range(len(stages)), [f"ZeRO-{s}" for s in stages])
    ax.set_ylabel("DeepSpeed step / torch AdamW step")
    ax.set_title("Learner overhead (median step time ratio)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(fig, out_dir / "learner_overhead.png")


def _demote(md: str, by: int = 2) -> str:
    """An embedded .md's headings moved `by` levels down, so they sit under the page's own sections."""
    out, fence = [], False
    for line in md.splitlines():
        if line.startswith("```"):
            fence = not fence
        if not fence and re.match(r"#{1,6} ", line):
            line = "#" * by + line
        out.append(line)
    return "\n".join(out).strip() + "\n"


# Page sections, in order: (title, json stem, plot function or None). Any other .md in the folder follows.
SECTIONS = [
    ("Self-improvement per round", "self_improvement", plot_self_improvement),
    ("Search quality: accuracy against generated tokens", "search_quality", plot_search_quality),
    ("Search loop vs RFT", "search_vs_rft", plot_search_vs_rft),
    ("Critic quality", "critic_quality", None),
    ("Engine throughput", "engine", plot_engine),
    ("Rollout and learner scaling, weight-publish latency", "scaling", (plot_scaling, plot_publish)),
    ("Learner overhead: DeepSpeed against plain torch", "learner_overhead", plot_learner_overhead),
    ("Search quality with the older scalar-head critics", "search_quality_head_critics", None),
]


def versions_line() -> str:
    names = ("matplotlib", "numpy")
    return ", ".join(f"{n} {importlib.metadata.version(n)}" for n in names)


def build(results: Path, summary: Path, out_dir: Path | None = None) -> Path:
    out_dir = out_dir or results
    out_dir.mkdir(parents=True, exist_ok=True)
    if not results.is_dir():
        raise ResultError(f"{results}: no such folder")
    svr_path = results / "search_vs_rft.json"
    svr = None
    if svr_path.exists():
        d = load(svr_path)
        svr = (provenance(svr_path, d), d)
    head = _git(ROOT, "rev-parse", "--short", "HEAD") or "unknown"
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Results",
        "",
        "<!-- generated by bench/plots.py: edit the benches or bench/plots.py, not this file -->",
        f"Generated by `python bench/plots.py` on {now} at commit {head} ({versions_line()}) from the JSON and "
        "`.md` files in this folder; `bash bench/run_all.sh` reruns every benchmark and then this script. "
        "Each plot's caption names the JSON it came from, the command that measured it, the date, the commit "
        "and the package versions that JSON records; the tables under each plot are the bench's own `.md`, "
        "embedded as written.",
        "",
    ]
    made: list[Path] = []

    lc = plot_learning_curve(summary, out_dir, svr)
    lines += ["## Learning curve per round (the main job)", ""]
    if lc:
        made.append(lc[0])
        lines += [f"![learning curve]({lc[0].name})", "", f"*{lc[1]}*", ""]
    else:
        lines += [f"*Not drawn: `{_rel(summary)}` was absent when this page was generated (runs/ is not committed). "
                  "Run `arbor train --config configs/arithmetic.yaml` (or `python bench/search_vs_rft.py`) and "
                  "then `python bench/plots.py --summary <run_dir>/summary.json`.*", ""]

    seen = set()
    for title, stem, fns in SECTIONS:
        jpath, mpath = results / f"{stem}.json", results / f"{stem}.md"
        if not jpath.exists() and not mpath.exists():
            continue
        seen.add(stem)
        lines += [f"## {title}", ""]
        if jpath.exists():
            d = load(jpath)
            prov = provenance(jpath, d)
            for fn in (fns if isinstance(fns, tuple) else (fns,)):
                if fn is None:
                    continue
                png = fn(jpath, d, out_dir)
                if png is None:
                    continue
                made.append(png)
                lines += [f"![{png.stem}]({png.name})", "", f"*{caption(prov)}*", ""]
            if fns is None:
                lines += [f"*{caption(prov, 'Table from')}*", ""]
            if prov["note"]:
                lines += [f"Note recorded in the JSON: {prov['note']}", ""]
        if mpath.exists():
            lines += [f"### Table ([{mpath.name}]({mpath.name}))", "", _demote(mpath.read_text(), 2)]
        elif jpath.exists():
            lines += [f"*No {mpath.name} table: the figures are in [{jpath.name}]({jpath.name}).*", ""]

    others = sorted(p for p in results.glob("*.md") if p.name != "README.md" and p.stem not in seen)
    for mpath in others:
        lines += [f"## {mpath.stem}", "", f"### Table ([{mpath.name}]({mpath.name}))", "", _demote(mpath.read_text(), 2)]

    lines += ["## Plots on this page", ""] + [f"- [{p.name}]({p.name})" for p in made] + [""]
    page = out_dir / "README.md"
    page.write_text("\n".join(lines))
    print(f"plots: wrote {len(made)} PNGs and {page}")
    return page


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results-dir", type=Path, default=ROOT / "docs" / "results")
    ap.add_argument("--summary", type=Path, default=DEFAULT_SUMMARY,
                    help="a run's summary.json for the learning curve (default: %(default)s)")
    ap.add_argument("--out-dir", type=Path, default=None, help="where the PNGs and README.md go (default: --results-dir)")
    args = ap.parse_args(argv)
    try:
        build(args.results_dir, args.summary, args.out_dir)
    except ResultError as e:
        print(f"plots: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
