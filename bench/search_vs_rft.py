"""The search-guided loop against rejection-sampling fine-tuning (RFT) at equal generated tokens. Not a test.

    python bench/search_vs_rft.py --seeds 0,1          # ~10 min per run on 2 CPU cores, 2 runs per seed

Each (method, seed) is one `arbor train` run, as a user runs it: configs/arithmetic.yaml (ηMCTS with the
generative verifier, critics trained, SFT on the best trajectory per prompt) and configs/rft.yaml (the same
bootstrap, prompts, learner and evaluation; rft.samples solutions per prompt, SFT on the verified ones, no
search, no critic). Both count every token the policy generated for training data (tokens_cumulative in
summary.json: search tokens plus critic-label completions for the loop, samples for RFT).

The comparison is at matched tokens: for each seed, T = the smaller of the two runs' final token counts,
and each run's held-out greedy accuracy at T is interpolated linearly between its rounds (round 0 is the
bootstrap, 0 tokens, the same weights in both runs of a seed). Reported: accuracy at T, the gain over the
bootstrap, search minus RFT, and the ratio of gains. Held-out accuracy is over loop.eval_size problems
(200: about +-3.5 points of noise per figure).

Writes docs/results/search_vs_rft.{json,md}; the JSON starts with the commit and package versions.
--reuse reads the run folders that already hold a summary.json instead of training them again (to add a
seed, or rebuild the tables).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.provenance import provenance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"search": "configs/arithmetic.yaml", "rft": "configs/rft.yaml"}


def run(method: str, seed: int, run_dir: Path, overrides: list[str]) -> list[dict]:
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", WANDB_MODE="offline")
    cmd = [sys.executable, "-m", "launch.cli", "train", METHODS[method], f"run_dir={run_dir}", f"seed={seed}",
           "wandb.mode=offline", "--resume", "none", *overrides]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    print(f"{method} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    return json.loads((run_dir / "summary.json").read_text())


def acc_at(rows: list[dict], tokens: float, key: str = "greedy_acc") -> float:
    """The run's accuracy at `tokens` generated tokens, linear between rounds."""
    xs = [r["tokens_cumulative"] for r in rows]
    return float(np.interp(tokens, xs, [r[key] for r in rows]))


def compare(seed: int, runs: dict[str, list[dict]]) -> dict:
    """The fields other tools read (search_gain, rft_gain at equal tokens, each run's tokens, rounds)."""
    s, f = runs["search"], runs["rft"]
    tokens = min(s[-1]["tokens_cumulative"], f[-1]["tokens_cumulative"])
    base = s[0]["greedy_acc"]
    a_s, a_f = acc_at(s, tokens), acc_at(f, tokens)

    def rounds(rows):
        wall = np.cumsum([r["seconds"] for r in rows])
        return [{"round": r["round"], "greedy_acc": r["greedy_acc"], "search_acc": r["search_acc"],
                 "tokens": r["tokens_cumulative"], "seconds": float(w)} for r, w in zip(rows, wall)]
    return {"seed": seed, "matched_tokens": tokens, "bootstrap_acc": base, "rft_bootstrap_acc": f[0]["greedy_acc"],
            "search_acc_at_tokens": a_s, "rft_acc_at_tokens": a_f, "search_minus_rft": a_s - a_f,
            "search_gain": a_s - base, "rft_gain": a_f - base,
            "search_tokens": s[-1]["tokens_cumulative"], "rft_tokens": f[-1]["tokens_cumulative"],
            "search_final_greedy": s[-1]["greedy_acc"], "rft_final_greedy": f[-1]["greedy_acc"],
            "search_final_mcts": s[-1]["search_acc"], "rft_final_mcts": f[-1]["search_acc"],
            "rounds": {"search": rounds(s), "rft": rounds(f)}}


def svg(out: dict) -> str:
    """Greedy accuracy against cumulative tokens (left) and wall time (right), one line per method and seed."""
    w, h, pad = 360, 260, 46
    colors = {"search": "#1f77b4", "rft": "#d62728"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w}" height="{h + 30}" font-family="sans-serif" font-size="11">']
    accs = [r["greedy_acc"] for p in out["seeds"] for rows in p["rounds"].values() for r in rows]
    lo, hi = min(accs) - 0.02, max(accs) + 0.02
    for panel, (key, label) in enumerate((("tokens", "generated tokens (cumulative)"), ("seconds", "wall seconds (cumulative)"))):
        x0 = panel * w
        xmax = max(r[key] for p in out["seeds"] for rows in p["rounds"].values() for r in rows) or 1
        px = lambda v: x0 + pad + (w - 1.5 * pad) * v / xmax  # noqa: E731
        py = lambda a: h - pad + 10 - (h - 1.5 * pad) * (a - lo) / (hi - lo)  # noqa: E731
        parts.append(f'<rect x="{x0 + pad}" y="{pad / 2}" width="{w - 1.5 * pad}" height="{h - 1.5 * pad}" fill="none" stroke="#999"/>')
        parts.append(f'<text x="{x0 + w / 2}" y="{h + 5}" text-anchor="middle">{label}</text>')
        for a in np.linspace(lo, hi, 5):
            parts.append(f'<text x="{x0 + pad - 4}" y="{py(a) + 4:.1f}" text-anchor="end">{a:.2f}</text>')
        parts.append(f'<text x="{x0 + pad + 4}" y="{pad / 2 + 12}">held-out greedy accuracy; xmax {xmax:,.0f}</text>')
        for p in out["seeds"]:
            for m, rows in p["rounds"].items():
                pts = " ".join(f"{px(r[key]):.1f},{py(r['greedy_acc']):.1f}" for r in rows)
                dash = "" if p["seed"] == out["seeds"][0]["seed"] else ' stroke-dasharray="4 3"'
                parts.append(f'<polyline points="{pts}" fill="none" stroke="{colors[m]}" stroke-width="2"{dash}/>')
    parts.append(f'<text x="{pad}" y="{h + 22}" fill="{colors["search"]}">search loop</text>'
                 f'<text x="{pad + 90}" y="{h + 22}" fill="{colors["rft"]}">RFT</text>'
                 f'<text x="{pad + 130}" y="{h + 22}">solid: seed {out["seeds"][0]["seed"]}, dashed: other seeds</text></svg>')
    return "\n".join(parts) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--runs-dir", default=str(ROOT / "runs/search_vs_rft"))
    ap.add_argument("--out-dir", default=str(ROOT / "docs/results"))
    ap.add_argument("--reuse", action="store_true", help="read the summary.json of runs already made instead of training them")
    ap.add_argument("overrides", nargs="*", help="key.path=value for both methods (e.g. loop.rounds=3)")
    args = ap.parse_args()
    prov = provenance()
    seeds = [int(x) for x in args.seeds.split(",")]
    per_seed = []
    for seed in seeds:
        runs = {}
        for method in METHODS:
            d = Path(args.runs_dir) / f"{method}_seed{seed}"
            done = args.reuse and (d / "summary.json").is_file()
            runs[method] = json.loads((d / "summary.json").read_text()) if done else run(method, seed, d, args.overrides)
        if runs["search"][0]["greedy_acc"] != runs["rft"][0]["greedy_acc"]:
            print(f"seed {seed}: the two bootstraps differ ({runs['search'][0]['greedy_acc']} vs "
                  f"{runs['rft'][0]['greedy_acc']}); the comparison uses the search run's", flush=True)
        per_seed.append(compare(seed, runs))
    diffs = [p["search_minus_rft"] for p in per_seed]
    out = {**prov, "bench": "search_vs_rft", "configs": METHODS, "overrides": args.overrides, "seeds": per_seed,
           "mean_search_minus_rft": float(np.mean(diffs))}
    dest = Path(args.out_dir)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "search_vs_rft.json").write_text(json.dumps(out, indent=1))
    (dest / "search_vs_rft.md").write_text(table(out))
    (dest / "search_vs_rft.svg").write_text(svg(out))
    print(table(out))


def table(out: dict) -> str:
    lines = ["# Search-guided loop vs rejection-sampling fine-tuning at equal generated tokens", "",
             f"Commit `{out['commit']}`, {out['machine']}; torch {out['versions']['torch']}, transformers "
             f"{out['versions']['transformers']}. `python bench/search_vs_rft.py --seeds "
             f"{','.join(str(p['seed']) for p in out['seeds'])} {' '.join(out['overrides'])}`: each row is a pair of `arbor train` runs "
             f"({out['configs']['search']} and {out['configs']['rft']}) from the same bootstrap.", "",
             "| seed | matched tokens | bootstrap greedy | search loop at T | RFT at T | search - RFT | gain ratio | "
             "search final (tokens) | RFT final (tokens) |", "|---|---|---|---|---|---|---|---|---|"]
    for p in out["seeds"]:
        ratio = "n/a" if p["rft_gain"] == 0 else f"{p['search_gain'] / p['rft_gain']:.2f}"
        lines.append(f"| {p['seed']} | {p['matched_tokens']:,} | {p['bootstrap_acc']:.3f} | {p['search_acc_at_tokens']:.3f} | "
                     f"{p['rft_acc_at_tokens']:.3f} | **{p['search_minus_rft']:+.3f}** | {ratio} | "
                     f"{p['search_final_greedy']:.3f} ({p['search_tokens']:,}) | "
                     f"{p['rft_final_greedy']:.3f} ({p['rft_tokens']:,}) |")
    lines += ["", f"Mean search - RFT over seeds: **{out['mean_search_minus_rft']:+.3f}** held-out greedy accuracy "
              "(200 problems per figure, about +-3.5 points of noise each). Plot: `search_vs_rft.svg` (accuracy against "
              "tokens and against wall time).", "",
              "Per round: held-out greedy accuracy / MCTS accuracy at evaluation (cumulative generated tokens, cumulative seconds):", "",
              "| seed | method | " + " | ".join(f"round {r['round']}" for r in out["seeds"][0]["rounds"]["search"]) + " |",
              "|---|---|" + "---|" * len(out["seeds"][0]["rounds"]["search"])]
    for p in out["seeds"]:
        for m, rows in p["rounds"].items():
            lines.append(f"| {p['seed']} | {m} | " + " | ".join(
                f"{r['greedy_acc']:.3f} / {r['search_acc']:.3f} ({r['tokens'] / 1e3:.0f}k, {r['seconds']:.0f} s)" for r in rows) + " |")
    lines += ["", "Greedy accuracy on held-out problems after each round; T = the smaller final token count of the pair, "
              "each run's accuracy at T linear between rounds. gain ratio = search_gain / rft_gain, the greedy points each "
              "gained over the bootstrap at T.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
