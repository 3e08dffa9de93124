"""Self-improvement on the embedded task: rounds of search -> critics (V, Q, PRM) -> policy, with
greedy, ηMCTS and A* accuracy on held-out problems and the critics' calibration every round.

Not a test: it runs the real training loop (Ray actors, DeepSpeed learner) and records what happened.

    python bench/self_improvement.py                       # the embedded recipe, configs/self_improvement.yaml
    python bench/self_improvement.py loop.rounds=2         # any dotted override of that config

Writes docs/results/self_improvement.json ({commit, versions, machine} from bench/provenance.py, taken
before training (with --tables-only: when the tables are written), and rounds: a list of rounds with round,
greedy_acc, mcts_acc, astar_acc, value_ece and the held-out ECE of every critic) and
docs/results/self_improvement.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local Ray on loopback only
os.environ.setdefault("WANDB_MODE", "offline")

from bench.provenance import provenance  # noqa: E402
from launch.controller import Controller  # noqa: E402
from rl.config import load_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs" / "self_improvement.yaml"))
    ap.add_argument("--run-dir", default="runs/self_improvement")
    ap.add_argument("--out-dir", default=str(ROOT / "docs" / "results"))
    ap.add_argument("--tables-only", action="store_true",
                    help="no training: write the tables from the summary.json of an existing --run-dir")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(args.config, [f"run_dir={args.run_dir}", *args.overrides])
    if cfg.search.method != "mcts" or "astar" not in cfg.loop.eval_methods or "q" not in cfg.learner.critics:
        raise SystemExit(f"{args.config}: the table needs search.method=mcts, loop.eval_methods with astar "
                         "and learner.critics with q")
    prov = provenance()  # before training: the code and packages that ran
    if args.tables_only:
        summary = json.loads((Path(args.run_dir) / "summary.json").read_text())
    else:
        summary = Controller(cfg, resume="none").run()
    seconds = sum(r["seconds"] for r in summary)

    # value_ece: V on the held-out problems' own labels (its Monte Carlo targets), as every critic is
    # reported; value_ece_greedy: V on the greedy solutions of the evaluation problems against their reward
    rounds = [{"round": r["round"], "greedy_acc": r["greedy_acc"], "mcts_acc": r["search_acc"],
               "astar_acc": r["astar_acc"], "value_ece": r.get("heldout_value_ece", float("nan")),
               "value_ece_greedy": r["value_ece"],
               **{k: v for k, v in r.items() if k.startswith("heldout_") and k != "heldout_value_ece"},
               "seconds": r["seconds"]} for r in summary]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "self_improvement.json").write_text(json.dumps({**prov, "rounds": rounds}, indent=1))
    first, last = rounds[0], rounds[-1]
    heldout = sorted({k for r in rounds for k in r if k.startswith("heldout_")})
    machine = prov["machine"]
    c = cfg
    lines = [
        "# Self-improvement on the embedded arithmetic task", "",
        f"`python bench/self_improvement.py` ({args.config}, overrides {args.overrides or 'none'}); {machine}; "
        f"{seconds / 60:.1f} min in all.",
        f"Policy: {c.model.embedded.hidden_size}-wide, {c.model.embedded.num_layers}-layer Llama, bootstrapped for "
        f"{c.bootstrap.steps} steps (round 0). Each later round: {c.loop.prompts_per_round} new prompts searched by "
        f"ηMCTS ({c.search.simulations} simulations, {c.search.selection}), then the critics "
        f"(V; {', '.join(c.learner.critics)}; Q from {c.labels.q_source}) and the policy (SFT on the best "
        "verified trajectory per prompt) are trained and pushed to the rollout actors.",
        f"Accuracy on {c.loop.eval_size} held-out problems for greedy, on the first {c.loop.eval_search_size} "
        f"for ηMCTS and A* (top-K {c.search.astar_top_k}, λ {c.search.astar_lam}, g = {c.search.astar_g_agg} "
        f"of PRM), with critics only (no labels at evaluation).",
        "Calibration (expected calibration error, 10 bins): `value ECE` is V on the held-out problems of that "
        "round against its ground truth there (each searched node's Monte Carlo return and each greedy solution's reward, binarised at 0.5), "
        "as every critic is reported (`heldout_q_ece`: Q against the best reward reached below (s, a); "
        "`heldout_prm_ece`: PRM against Math-Shepherd labels). `value ECE (greedy)` is V on the greedy "
        "solutions of the evaluation problems against their verified reward: a different distribution from "
        "the one V is trained on (the nodes of an exploring search), shown because that is where a reader "
        "would check it. Round 0's critics are untrained heads.", "",
        "| round | greedy | ηMCTS | A* | value ECE | value ECE (greedy) | " + " | ".join(heldout) + " | seconds |",
        "|---" * (7 + len(heldout)) + "|"]
    for r in rounds:
        lines.append(f"| {r['round']} | {r['greedy_acc']:.3f} | {r['mcts_acc']:.3f} | {r['astar_acc']:.3f} | "
                     f"{r['value_ece']:.3f} | {r['value_ece_greedy']:.3f} | "
                     + " | ".join(f"{r.get(k, float('nan')):.3f}" for k in heldout) + f" | {r['seconds']:.0f} |")
    lines += ["", f"After round {last['round']}: A* {last['astar_acc']:.3f} against round-0 greedy "
                  f"{first['greedy_acc']:.3f} ({100 * (last['astar_acc'] - first['greedy_acc']):+.1f} points); "
                  f"value ECE {last['value_ece']:.3f} on held-out search nodes, {last['value_ece_greedy']:.3f} on "
                  "held-out greedy solutions."]
    (out / "self_improvement.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
