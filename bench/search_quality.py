"""Every search method on held-out problems at three token budgets, plus an ηMCTS ablation.

Not a test: it measures. Usage (after `python bench/self_improvement.py`, which trains V, Q and the PRM):

    python bench/search_quality.py --checkpoint runs/self_improvement --n 200

Writes docs/results/search_quality.md and docs/results/search_quality.json (one record per
method, budget and critics: method, budget_tokens, critics, accuracy, mean_tokens, seconds_per_problem, and
`correct`, 0/1 per problem), and docs/results/search_quality_pairs.json: ηMCTS and A* against SC and BoN on
the same problems, with paired bootstrap intervals.

Sections (--sections, default all three): `trained`, every method with the checkpoint's critics; `rule`, the
methods that read a critic with the task's rule-based step utility in its place (rl/grading/rule_critic.py);
`ablation`. A run of some sections keeps the other sections' records from the JSON files it rewrites;
`--sections none` only rewrites the tables from them, and `--methods a,b` reruns only those methods. Every record names the commit it was measured at.
With the trained section, each method in --tune (default sc, bon, mcts, astar) first gets its sampling
temperature chosen on --dev-n problems of --dev-seed (disjoint from the test problems by question text, checked
in dev_problems) at --tune-budget tokens; the JSON keeps every try. The JSON holds provenance, the checkpoint,
`tuning` and `rows` (one per method, budget and critics: critics is "trained", "none" or "rule").
Critics that are not trained yet (PRM, ORM, Q) fall back to the value critic, as each method documents;
the tables say so.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.provenance import provenance  # noqa: E402
from launch.checkpoint import load_loop_state, resolve_checkpoint  # noqa: E402
from rl.config import from_dict  # noqa: E402
from rl.rollout import RolloutWorker  # noqa: E402
from rl.search import SEARCHES  # noqa: E402
from rl.tasks import build_task  # noqa: E402

EVAL_SEED = 31337  # a held-out seed the training run never used
# generous sizes so that the token budget, not the method's own limit, is what binds; MCTS keeps sampling new
# steps once its tree is exhausted (search.widen) so that it, too, can spend a larger budget
WIDE = ["search.samples=32", "search.simulations=200", "search.astar_max_expansions=200", "search.beam_width=4",
        "search.astar_top_k=4", "search.widen=3", "search.samples_batch=1"]
# the methods that read a critic, with the task's rule-based utility standing in for it (RULE_ROLES says where).
# Sampling temperatures were chosen per method on 100 other held-out problems (seed 4242) at 96 and 192 tokens,
# each method's best (accuracy at 192 tokens): bon 0.70 / 0.73 / 0.71 at 0.8 / 1.0 / 1.2; ηMCTS 0.71 / 0.76 /
# 0.80 / 0.50 at 0.8 / 1.2 / 1.5 / 2.0; A* (8 redraws) 0.78 / 0.78 / 0.75 at 1.0 / 1.2 / 1.5; beam 0.69 / 0.65 at
# 0.8 / 1.5. With a step check a search can sample hotter: a wrong step is caught where it is made.
DEV_SEED = 4242
RULE = {"bon": ["search.rule_critics=[orm]", "search.temperature=1.0"],
        "beam": ["search.rule_critics=[prm]"],
        "mcts": ["search.rule_critics=[value]", "search.adaptive=true", "search.temperature=1.5"],
        "astar": ["search.astar_g_source=rule", "search.astar_temperature=1.0", "search.astar_redraws=8"]}
RULE_ROLES = ("bon ranks by the rule as ORM (1 iff every step is right), samples at temperature 1.0; beam scores "
              "steps by it as PRM (temperature 0.8); ηMCTS takes it as V (adaptive branching on, temperature 1.5); "
              "A* takes g from it (h still from the trained Q; candidates at temperature 1.0, search.astar_redraws=8). "
              f"Each temperature is the method's best on 100 other held-out problems (seed {DEV_SEED})")
# --tune: each method's sampling temperature is chosen on dev problems (--dev-seed, --dev-n), disjoint from the
# test problems by question text (dev_problems checks it), at --tune-budget tokens; the best dev accuracy wins,
# ties going to the lower temperature. A* samples its candidates at search.astar_temperature, the rest at
# search.temperature.
TEMPERATURE_KEY = {"astar": "search.astar_temperature"}
GRID = {"astar": (0.3, 0.6, 1.0)}
DEFAULT_GRID = (0.6, 0.8, 1.0, 1.2)


def dev_problems(task, test: list, n: int, seed: int) -> list:
    """n problems of the eval split drawn with another seed, none of whose question texts is a test problem's.
    Raises if the seed cannot give n such problems, and checks the result (the two sets share no question)."""
    test_q = {p.question for p in test}
    dev = [p for p in task.generate(2 * n + len(test), seed, "eval") if p.question not in test_q][:n]
    if len(dev) < n:
        raise SystemExit(f"--dev-seed {seed}: only {len(dev)} of {n} dev problems are not test problems")
    assert not test_q & {p.question for p in dev}, "dev and test problems share a question"
    return dev


ABLATION = [
    ("plain MCTS (UCT, fixed width 3)", ["search.selection=uct", "search.adaptive=false"]),
    ("+ PUCT prior", ["search.selection=puct", "search.adaptive=false"]),
    ("+ adaptive branching", ["search.selection=puct", "search.adaptive=true"]),
    ("+ PRM (leaf score 0.5 V + 0.5 PRM)", ["search.selection=puct", "search.adaptive=true",
                                             "search.beta_value=0.5", "search.beta_prm=0.5"]),
    ("+ fast rollout (2, scored by the ORM or V)", ["search.selection=puct", "search.adaptive=true",
                                                    "search.rollouts=2", "search.beta_value=0.25",
                                                    "search.beta_prm=0.25", "search.beta_orm=0.5"]),
    ("+ state merge (edit distance 0.15)", ["search.selection=puct", "search.adaptive=true", "search.rollouts=2",
                                            "search.beta_value=0.25", "search.beta_prm=0.25",
                                            "search.beta_orm=0.5", "search.merge_threshold=0.15"]),
]


def run(worker: RolloutWorker, problems, method: str, cfg) -> dict:
    worker.search_cfg = cfg.search
    t0 = time.perf_counter()
    recs = worker.evaluate(problems, method)
    secs = (time.perf_counter() - t0) / len(problems)
    return {"accuracy": float(np.mean([r.correct for r in recs])), "mean_tokens": float(np.mean([r.tokens for r in recs])),
            "seconds_per_problem": secs, "correct": [int(r.correct) for r in recs]}


def paired_difference(a: list[int], b: list[int], *, resamples: int = 5000, seed: int = 0) -> dict:
    """accuracy(a) - accuracy(b) on the same problems, with a 95% paired bootstrap interval (problems resampled),
    and how many problems only a / only b solved."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    d = x - y
    idx = np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))
    lo, hi = np.quantile(d[idx].mean(axis=1), [0.025, 0.975])
    return {"diff": float(d.mean()), "ci95": [float(lo), float(hi)], "only_a": int((d > 0).sum()),
            "only_b": int((d < 0).sum())}


def show(record: dict) -> None:
    """One progress line: the record without its per-problem list."""
    print(json.dumps({k: v for k, v in record.items() if k != "correct"}), flush=True)


# the goal: a >= b; (method, critics) pairs
COMPARED = [(("mcts", "trained"), ("sc", "none")), (("mcts", "trained"), ("bon", "trained")),
            (("astar", "trained"), ("sc", "none")), (("astar", "trained"), ("bon", "trained")),
            (("mcts", "rule"), ("sc", "none")), (("mcts", "rule"), ("bon", "rule")),
            (("astar", "rule"), ("sc", "none")), (("astar", "rule"), ("bon", "rule"))]
NO_CRITIC = ("greedy", "sc")


def label(method: str, critics: str) -> str:
    return method if critics in ("trained", "none") else f"{method} ({critics})"


def kept(path: Path, keep) -> list[dict]:
    """The records of a JSON list file that `keep` accepts (the sections this run does not redo)."""
    return [r for r in json.loads(path.read_text()) if keep(r)] if path.is_file() else []


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="runs/self_improvement")
    ap.add_argument("--n", type=int, default=400, help="held-out problems for the method table")
    ap.add_argument("--ablation-n", type=int, default=200, help="the first this many of them for the ablation")
    ap.add_argument("--budgets", default="96,192,384")
    ap.add_argument("--ablation-budget", type=int, default=384)
    ap.add_argument("--out-dir", default="docs/results")
    ap.add_argument("--sections", default="trained,rule,ablation")
    ap.add_argument("--methods", default=",".join(SEARCHES), help="rerun only these methods of the sections")
    ap.add_argument("--tune", default="sc,bon,mcts,astar",
                    help="methods of the trained section whose temperature is chosen on dev problems (none: keep "
                         "the checkpoint's)")
    ap.add_argument("--dev-seed", type=int, default=DEV_SEED, help="seed of the dev problems the tuning uses")
    ap.add_argument("--dev-n", type=int, default=100)
    ap.add_argument("--tune-budget", type=int, default=192)
    args = ap.parse_args()
    prov = provenance()  # before measuring: the code that ran
    sections = set(args.sections.split(",")) - {"none"}
    if not sections <= {"trained", "rule", "ablation"}:
        raise SystemExit(f"--sections {args.sections!r}: use some of trained, rule, ablation (or none)")
    commit = prov["commit"]
    out = Path(args.out_dir)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    ck = resolve_checkpoint(args.checkpoint)
    base = load_loop_state(ck)["config"]
    cfg0 = from_dict(base, [], where=str(ck))
    task = build_task(cfg0.task)
    problems = task.generate(args.n, EVAL_SEED, "eval")
    critics = [n for n in ("q", "prm", "orm") if (ck / n).is_dir()]  # the critics this checkpoint trained
    worker = RolloutWorker(task, cfg0.search, str(ck / "policy"), str(ck / "value"), seed=0, critics=critics,
                           critic_paths={n: str(ck / n) for n in critics},
                           critic_model=cfg0.learner.critic_model)

    budgets = [int(b) for b in args.budgets.split(",")]
    old = out / "search_quality.json"
    saved = json.loads(old.read_text()) if old.is_file() else {}
    saved = {"rows": saved} if isinstance(saved, list) else saved  # the list format before provenance
    tuning = saved.get("tuning", {}) if "trained" not in sections else {}
    tune = [] if args.tune == "none" else args.tune.split(",")
    methods = args.methods.split(",")
    if "trained" in sections and tune:
        dev = dev_problems(task, problems, args.dev_n, args.dev_seed)
        for method in (m for m in tune if m in methods):
            key = TEMPERATURE_KEY.get(method, "search.temperature")
            tries = []
            for temp in GRID.get(method, DEFAULT_GRID):
                cfg = from_dict(base, [*WIDE, f"search.max_tokens={args.tune_budget}", f"{key}={temp}"], where=str(ck))
                worker.rng = np.random.default_rng(0)
                tries.append({"temperature": temp, "accuracy": run(worker, dev, method, cfg)["accuracy"]})
                print(json.dumps({"tune": method, **tries[-1]}), flush=True)
            best = max(tries, key=lambda t: (t["accuracy"], -t["temperature"]))
            tuning[method] = {"key": key, "temperature": best["temperature"], "tries": tries}
    tuning_meta = {"dev_seed": args.dev_seed, "dev_n": args.dev_n, "budget_tokens": args.tune_budget,
                   "shared_questions_with_test": 0} if tuning else {}
    for r in (records := saved.get("rows", [])):
        r.setdefault("critics", "none" if r["method"] in NO_CRITIC else "trained")  # records from before sections
    redo = ({"trained", "none"} if "trained" in sections else set()) | ({"rule"} if "rule" in sections else set())
    methods = args.methods.split(",")
    if not set(methods) <= set(SEARCHES):
        raise SystemExit(f"--methods {args.methods!r}: use some of {', '.join(SEARCHES)}")
    records = [r for r in records if not (r["critics"] in redo and r["method"] in methods)]
    if any(len(r["correct"]) != args.n for r in records):
        raise SystemExit(f"--n {args.n}: the kept records of {out / 'search_quality.json'} are on another number of "
                         "problems; rerun every section (--sections trained,rule,ablation) or match --n")
    for budget in budgets:
        runs = [(m, "none" if m in NO_CRITIC else "trained", []) for m in SEARCHES] if "trained" in sections else []
        runs += [(m, "rule", ov) for m, ov in RULE.items()] if "rule" in sections else []
        runs = [run_ for run_ in runs if run_[0] in methods]
        for method, critics_used, ov in runs:
            t = tuning.get(method) if critics_used in ("trained", "none") else None
            ov = [*ov, f"{t['key']}={t['temperature']}"] if t else ov
            cfg = from_dict(base, [*WIDE, f"search.max_tokens={budget}", *ov], where=str(ck))
            worker.rng = np.random.default_rng(0)
            r = {"method": method, "budget_tokens": budget, "critics": critics_used, "commit": commit,
                 "temperature": t["temperature"] if t else None, **run(worker, problems, method, cfg)}
            records.append(r)
            show(r)
    order = [(m, "none" if m in NO_CRITIC else "trained") for m in SEARCHES] + [(m, "rule") for m in RULE]
    records.sort(key=lambda r: (r["budget_tokens"], order.index((r["method"], r["critics"]))))
    ablation = [] if "ablation" in sections else kept(out / "search_quality_ablation.json", lambda r: True)
    for name, ov in (ABLATION if "ablation" in sections else []):
        cfg = from_dict(base, [*WIDE, f"search.max_tokens={args.ablation_budget}", *ov], where=str(ck))
        worker.rng = np.random.default_rng(0)
        r = {"variant": name, "budget_tokens": args.ablation_budget, "commit": commit,
             **run(worker, problems[:args.ablation_n], "mcts", cfg)}
        ablation.append(r)
        show(r)

    out.mkdir(parents=True, exist_ok=True)
    (out / "search_quality.json").write_text(json.dumps(
        {**prov, "checkpoint": str(ck), "n": args.n, "eval_seed": EVAL_SEED, "tuning": tuning,
         "tuning_dev": tuning_meta or saved.get("tuning_dev", {}), "rows": records}, indent=1))
    (out / "search_quality_ablation.json").write_text(json.dumps(ablation, indent=1))
    by = {(r["method"], r["critics"], r["budget_tokens"]): r for r in records}
    pairs = [{"a": label(*a), "b": label(*b), "budget_tokens": budget,
              "mean_tokens": [by[(*a, budget)]["mean_tokens"], by[(*b, budget)]["mean_tokens"]],
              **paired_difference(by[(*a, budget)]["correct"], by[(*b, budget)]["correct"])}
             for budget in budgets for a, b in COMPARED if (*a, budget) in by and (*b, budget) in by]
    (out / "search_quality_pairs.json").write_text(json.dumps(pairs, indent=1))
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, no GPU"
    lines = ["# Search quality at equal token budgets", "",
             f"Checkpoint `{ck}`; {args.n} held-out problems (eval split, seed {EVAL_SEED}); {machine}.",
             "Budget = generated tokens per problem: no generation starts once it is spent (a call that starts "
             "under it runs to its end, so mean tokens can exceed it slightly). Trained critics in this checkpoint: "
             f"V{''.join(', ' + n.upper() for n in critics)} (`learner.critic_model: {cfg0.learner.critic_model}`"
             f"{': the policy LM fine-tuned on verified solutions, which also serves as PRM and ORM' if cfg0.learner.critic_model == 'generative' else ''}"
             "); a method whose critic is missing uses V in its "
             "place (wvote and bon read the ORM, beam and A*'s g the PRM, A*'s h the Q model). Produced by "
             "`python bench/search_quality.py`."
             + (" Rows marked (rule) put the task's rule-based step utility (a check of each step from its text, "
                f"no label read) in place of a trained critic: {RULE_ROLES}."
                if any(r["critics"] == "rule" for r in records) else ""), "",
             "| method | budget | temperature | accuracy | mean tokens | s / problem |", "|---|---|---|---|---|---|"]
    for r in records:
        temp = "-" if r.get("temperature") is None else r["temperature"]
        lines.append(f"| {label(r['method'], r['critics'])} | {r['budget_tokens']} | {temp} | {r['accuracy']:.3f} | "
                     f"{r['mean_tokens']:.0f} | {r['seconds_per_problem']:.3f} |")
    if tuning:
        meta = tuning_meta or saved.get("tuning_dev", {})
        lines += ["", f"Temperatures (trained rows): each method's best on {meta.get('dev_n')} dev problems (eval "
                  f"split, seed {meta.get('dev_seed')}; no question shared with the test problems, checked by "
                  f"dev_problems) at {meta.get('budget_tokens')} tokens; ties go to the lower temperature. Rerun: "
                  "`--tune sc,bon,mcts,astar --dev-seed S`. A row with '-' keeps the checkpoint's temperature.", "",
                  "| method | key | " + " | ".join(f"try {i + 1}" for i in range(max(len(t['tries']) for t in tuning.values())))
                  + " | chosen |",
                  "|---|---|" + "---|" * (max(len(t['tries']) for t in tuning.values()) + 1)]
        for m, t in tuning.items():
            lines.append(f"| {m} | {t['key']} | " + " | ".join(f"{x['temperature']}: {x['accuracy']:.3f}" for x in t["tries"])
                         + f" | {t['temperature']} |")
    lines += ["", "## The goal: ηMCTS and A* at least as accurate as SC and BoN at each budget", "",
              "Paired on the same problems: difference in accuracy, its 95% bootstrap interval (problems "
              "resampled 5000 times), and the problems only one of the two solved. `>=` holds when the difference "
              "is not negative; an interval that spans 0 means this many problems cannot tell the two apart. "
              "Tokens: the mean generated tokens of a and of b (the cap is soft, see above).", "",
              "| budget | a | b | a - b | 95% interval | only a | only b | tokens a / b | a >= b |",
              "|---|---|---|---|---|---|---|---|---|"]
    for p in pairs:
        lines.append(f"| {p['budget_tokens']} | {p['a']} | {p['b']} | {p['diff']:+.3f} | "
                     f"[{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}] | {p['only_a']} | {p['only_b']} | "
                     f"{p['mean_tokens'][0]:.0f} / {p['mean_tokens'][1]:.0f} | "
                     f"{'yes' if p['diff'] >= 0 else '**no**'} |")
    lines.append("")
    for kind, rows in (("trained critics", [p for p in pairs if "(" not in p["a"]]),
                       ("the rule-based utility", [p for p in pairs if "(" in p["a"]])):
        if rows:
            lines.append(f"With {kind}: {sum(p['diff'] >= 0 for p in rows)} of {len(rows)} comparisons hold.")
    if ablation:
        lines += ["", f"## ηMCTS ablation (budget {args.ablation_budget} tokens, the first {args.ablation_n} problems)",
                  "", "| variant | accuracy | mean tokens | s / problem |", "|---|---|---|---|"]
    for r in ablation:
        lines.append(f"| {r['variant']} | {r['accuracy']:.3f} | {r['mean_tokens']:.0f} | {r['seconds_per_problem']:.3f} |")
    lines += ["", "Reading the tables: a method that stops by itself (greedy; A* at its first terminal) spends the same "
              "tokens at every budget. sc, wvote and bon draw more samples, one per policy call "
              "(search.samples_batch=1) so that, like the step-wise methods, they pass the budget by at most one "
              "generation, and MCTS (search.widen=3: a simulation "
              "that revisits a scored terminal samples 3 more steps at the node on its path, with draws left, "
              "whose children's values differ most) keeps adding candidates, so these scale with it. The ablation rows leave widen on throughout. "
              "Seconds per problem are wall time on a 2-core machine and move with whatever else runs.",
              "",
              "A*'s mean tokens pass the cap by more than the others' because one pop samples top_k candidates "
              "for each new child in a single call."]
    if any(r["critics"] == "rule" for r in records):
        lines += ["", "The (rule) rows: with the task's step check the step-wise searches spend their budget where "
                  "a step went wrong (ηMCTS widens where its children's values differ, A* redraws at the deepest "
                  "right state) while best-of-N must draw whole solutions."]
    measured = {}
    for r in records + [{**r, "critics": "ablation"} for r in ablation]:
        measured.setdefault(r["critics"].replace("none", "trained"), set()).add(r.get("commit", "not recorded"))
    lines += ["", "Measured at commit: " + "; ".join(f"{kind} rows {', '.join(sorted(c))}"
                                                    for kind, c in measured.items()) + "."]
    (out / "search_quality.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'search_quality.md'}")


if __name__ == "__main__":
    main()
