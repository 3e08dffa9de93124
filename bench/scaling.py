"""Scaling on one machine: rollout throughput with 1 and 2 actors, weight-publish latency, and sync
against async training, all measured in the same run.

Not a test: it measures. Usage:

    python bench/scaling.py                                   # the full run (long: needs an otherwise idle machine)
    nice -n 10 python bench/scaling.py --quick --out-dir /tmp/scaling_smoke   # a smoke run of every part
    python bench/scaling.py search.simulations=16             # dotted overrides of the config, for every part

1. Rollout throughput. One embedded model is built (configs/arithmetic.yaml's model.embedded) and, unless
   --bootstrap-steps 0, trained for that many supervised steps on gold solutions (Learner.train_policy, as
   round 0 of a run does, critics then started from its backbone), so that searches end at answers as they
   do in training; with 0 the weights stay random. A RolloutPool of 1 and then of 2 actors
   (rollout.num_cpus each, one torch thread each) searches the same --n generated train problems with the
   config's search; each actor first searches WARMUP_PROBLEMS problems untimed. Throughput = problems (and
   generated tokens) per second of `pool.search` wall time; each size is measured --repeats times, the
   sizes alternating, and the medians are kept. rollout_speedup_2_actors = problems/s(2) / problems/s(1).
2. Weight-publish latency: bench/scaling_publish.py as a subprocess (its own Ray, after ours is shut down);
   its ratios of publish time to one raw broadcast of the same bytes are copied here.
3. Sync against async training: launch.controller.Controller on a small config (LOOP_OVERRIDES), once with
   loop.mode=sync and once with loop.mode=async, each on a fresh Ray and a fresh run_dir. Throughput = train
   prompts searched per second of the summary rows' `seconds` over rounds 1..R (round 0, the bootstrap, is
   left out). The idle times are the controller's own metrics (kept by wrapping its tracker, since W&B is
   disabled); the learner's idle time in sync mode is not logged and is taken as time/search, during which
   the learner waits.

Writes scaling.json and scaling.md to --out-dir (docs/results by default). scaling.json carries
bench/provenance.py's commit, versions and machine at its top level, the machine's details under machine_details.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every Ray process binds to 127.0.0.1
os.environ.setdefault("WANDB_MODE", "offline")

import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
from ray.util import remove_placement_group  # noqa: E402

from actors.rollout import RolloutPool  # noqa: E402
from bench.provenance import provenance  # noqa: E402
from launch.controller import BOOTSTRAP_SEED_OFFSET, Controller  # noqa: E402
from learners.group import LearnerGroup  # noqa: E402
from learners.learner import Learner  # noqa: E402
from rl.config import Config, load_config  # noqa: E402
from rl.models.embedded import build_embedded_model  # noqa: E402
from rl.runtime import threads_for  # noqa: E402
from rl.tasks import TASKS  # noqa: E402

RAY_CPUS = 2               # the whole machine, as every part of a training run sees it
PROBLEM_SEED = 3 * 10**6   # train-split problems that no round (seed*1000 + r) or bootstrap (seed + 10**6) draws
WARMUP_PROBLEMS = 2        # per actor, untimed: first generate calls allocate and load lazily
GOAL_SPEEDUP = 1.7         # 2 actors against 1
GOAL_PUBLISH_RATIO = 1.3   # publish seconds / raw broadcast seconds of the same bytes
# the training comparison, small so that two runs fit one sitting. Resources: learner 1.0 CPU, two actors 0.45
# each (one torch thread each), replay actor 0.1 = RAY_CPUS, the same in both modes
LOOP_OVERRIDES = ["loop.rounds=3", "loop.prompts_per_round=64", "loop.eval_size=20", "loop.eval_search_size=10",
                  "loop.max_staleness=1", "bootstrap.steps=100", "learner.num_cpus=1.0", "rollout.num_actors=2",
                  "rollout.num_cpus=0.45", "wandb.mode=disabled"]
# --quick: every code path in a few minutes, numbers meaningless. chunk_size 2 so 2 actors share the work
QUICK_OVERRIDES = ["search.simulations=4", "rollout.chunk_size=2"]
QUICK_LOOP = ["loop.rounds=1", "loop.prompts_per_round=4", "loop.eval_size=4", "loop.eval_search_size=2",
              "bootstrap.steps=5", "bootstrap.examples=64"]


@contextmanager
def ray_session():
    """A fresh local Ray of RAY_CPUS CPUs, shut down afterwards (which also ends every actor in it)."""
    # "local": always a new instance of our own, never the cluster of another job on the machine
    ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def merged(*groups: list[str]) -> list[str]:
    """Dotted overrides with one entry per key, the last given winning (the report lists each key once)."""
    out: dict[str, str] = {}
    for group in groups:
        for text in group:
            out[text.split("=", 1)[0]] = text
    return list(out.values())


def with_rollout(cfg: Config, **changes) -> Config:
    return dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, **changes))


# ---- 1. rollout throughput ---------------------------------------------------------------
def bootstrap_model(cfg: Config, out: Path, steps: int) -> tuple[str, str, dict]:
    """Build the embedded model in out/base; with steps > 0, SFT it as round 0 does and save to out/boot.

    Returns (policy_path, value_path, info).
    """
    base = str(build_embedded_model(cfg.model.embedded, out / "base", seed=cfg.seed))
    if steps == 0:
        return base, base, {"bootstrap_steps": 0, "weights": "random"}
    task = TASKS[cfg.task.name](cfg.task.arithmetic)
    probs = task.generate(cfg.bootstrap.examples, cfg.seed + BOOTSTRAP_SEED_OFFSET, "train")
    # the whole machine for the learner: nothing else runs during the bootstrap, and it is not timed
    lcfg = dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, num_cpus=float(RAY_CPUS), num_ranks=1))
    t0 = time.perf_counter()
    group = LearnerGroup(lcfg, base, base)
    m = group.call(Learner.train_policy, [task.prompt(p) for p in probs], [p.solution for p in probs],
                   steps=steps, lr=cfg.bootstrap.lr)
    group.call(Learner.init_value_from_policy)  # the critics start from the bootstrapped backbone, as in a run
    group.call(Learner.save, str(out / "boot"))
    for rank in group.ranks:
        ray.kill(rank)
    remove_placement_group(group.pg)
    return str(out / "boot" / "policy"), str(out / "boot" / "value"), {
        "bootstrap_steps": steps, "weights": "bootstrapped", "policy_loss": m.get("learner/policy_loss"),
        "bootstrap_seconds": time.perf_counter() - t0}


def time_pool(cfg: Config, policy: str, value: str, problems: list, warmup: list) -> dict:
    """Start a pool for cfg.rollout, warm every actor up, time one pool.search(problems), tear it down."""
    pool = RolloutPool(cfg, policy, value)
    try:
        ray.get([a.search.remote(warmup, use_reward=True) for a in pool.actors])
        t0 = time.perf_counter()
        batches = pool.search(problems)
        seconds = time.perf_counter() - t0
    finally:
        for actor in pool.actors:
            ray.kill(actor)
        pool.placement.remove()
    records = [rec for b in batches for rec in b.records]
    tokens = int(sum(rec.tokens for rec in records))
    return {"seconds": seconds, "problems": len(records), "tokens": tokens,
            "problems_per_s": len(records) / seconds, "tokens_per_s": tokens / seconds,
            "search_acc": float(np.mean([rec.correct for rec in records]))}


def rollout_part(cfg: Config, *, n: int, repeats: int, num_cpus: float, bootstrap_steps: int, tmp: Path) -> dict:
    task = TASKS[cfg.task.name](cfg.task.arithmetic)
    problems = task.generate(n, PROBLEM_SEED, "train")
    warmup = task.generate(WARMUP_PROBLEMS, PROBLEM_SEED + 1, "train")
    with ray_session():
        policy, value, model = bootstrap_model(cfg, tmp / "rollout_model", bootstrap_steps)
        print(f"[rollout] model: {model}", flush=True)
        runs: dict[int, list[dict]] = {1: [], 2: []}
        for rep in range(repeats):
            for actors in ((1, 2) if rep % 2 == 0 else (2, 1)):  # alternate, so a drifting load hits both
                r = time_pool(with_rollout(cfg, num_actors=actors, num_cpus=num_cpus), policy, value, problems, warmup)
                runs[actors].append(r)
                print(f"[rollout] repeat {rep} actors {actors}: {r['problems_per_s']:.3f} problems/s, "
                      f"{r['tokens_per_s']:.0f} tokens/s ({r['seconds']:.1f} s)", flush=True)
    med = {a: {k: float(np.median([r[k] for r in rs])) for k in ("seconds", "problems_per_s", "tokens_per_s")}
           for a, rs in runs.items()}
    return {"model": model, "problems": n, "repeats": repeats, "num_cpus_per_actor": num_cpus,
            "threads_per_actor": threads_for(num_cpus), "chunk_size": cfg.rollout.chunk_size,
            "search": {"method": cfg.search.method, "simulations": cfg.search.simulations,
                       "branching": cfg.search.branching, "max_depth": cfg.search.max_depth,
                       "step_max_tokens": cfg.search.step_max_tokens, "backend": cfg.model.backend},
            "median": {str(a): m for a, m in med.items()}, "runs": {str(a): rs for a, rs in runs.items()},
            "speedup_problems": med[2]["problems_per_s"] / med[1]["problems_per_s"],
            "speedup_tokens": med[2]["tokens_per_s"] / med[1]["tokens_per_s"]}


# ---- 2. weight-publish latency -------------------------------------------------------------
def publish_part(sizes: str, repeats: int, tmp: Path) -> dict:
    """bench/scaling_publish.py in a subprocess (it starts its own Ray; ours is down by then)."""
    out = tmp / "scaling_publish.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "scaling_publish.py"), "--sizes", sizes,
                    "--repeats", str(repeats), "--out", str(out)], check=True, cwd=ROOT)
    return json.loads(out.read_text())


# ---- 3. sync against async training ---------------------------------------------------------
class RecordingController(Controller):
    """The Controller, keeping every scalar metric it logs (run() returns only the summary rows)."""

    def setup(self) -> None:
        super().setup()
        self.logged: list[dict] = []
        log = self.tracker.log

        def keep(metrics: dict, step: int) -> None:
            self.logged.append({"round": step, **{k: float(v) for k, v in metrics.items()
                                                  if isinstance(v, (int, float)) and not isinstance(v, bool)}})
            log(metrics, step=step)

        self.tracker.log = keep


def mean_of(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if key in r]
    return float(np.mean(vals)) if vals else None


def loop_run(config: str, overrides: list[str], mode: str, run_dir: Path) -> dict:
    cfg = load_config(config, [*overrides, f"loop.mode={mode}", f"run_dir={run_dir}"])
    t0 = time.perf_counter()
    with ray_session():
        ctl = RecordingController(cfg, resume="none", console=False)
        summary = ctl.run()
    wall = time.perf_counter() - t0
    rows = [r for r in summary if r["round"] >= 1]
    logged = [m for m in ctl.logged if m["round"] >= 1]
    seconds = float(sum(r["seconds"] for r in rows))
    prompts = cfg.loop.prompts_per_round * len(rows)
    time_keys = sorted({k for m in logged for k in m if k.startswith("time/")})
    out = {"mode": mode, "rounds": len(rows), "prompts": prompts, "seconds_rounds_1_to_R": seconds,
           "prompts_per_s": prompts / seconds, "wall_seconds_with_setup_and_round_0": wall,
           "round_seconds": [r["seconds"] for r in summary],
           "final_greedy_acc": summary[-1]["greedy_acc"], "final_search_acc": summary[-1]["search_acc"],
           "mean_search_problems_per_s": mean_of(logged, "perf/problems_per_s"),
           "dropped_trajectories": sum(m.get("async/dropped_trajectories", 0.0) for m in logged),
           "mean_time": {k: mean_of(logged, k) for k in time_keys},
           "rollout_idle_s": mean_of(logged, "time/rollout_idle"),
           "learner_idle_s": mean_of(logged, "time/learner_idle"), "learner_idle_source": "time/learner_idle"}
    if mode == "sync":  # not logged in sync mode: the learner waits out every search
        out["learner_idle_s"], out["learner_idle_source"] = mean_of(logged, "time/search"), "time/search"
    print(f"[loop] {mode}: {prompts} prompts in {seconds:.1f} s -> {out['prompts_per_s']:.3f} prompts/s "
          f"(rollout idle {out['rollout_idle_s']}, learner idle {out['learner_idle_s']})", flush=True)
    return out


# ---- report ---------------------------------------------------------------------------------
def machine(load_at_start) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": torch.cuda.is_available(),
            "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "torch": torch.__version__, "ray": ray.__version__, "python": platform.python_version(),
            "load_average_at_start": list(load_at_start), "load_average_at_end": list(os.getloadavg())}


def fmt(x, spec=".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def write_report(out_dir: Path, res: dict, command: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scaling.json").write_text(json.dumps(res, indent=1))
    m, ro, pub, lp = res["machine_details"], res["rollout"], res["publish"], res["loop"]
    goals = res["goals"]

    def met(key: str) -> str:
        g = goals.get(key)
        return "n/a" if g is None or g["met"] is None else ("met" if g["met"] else "**not met**")

    lines = [
        "# Scaling on one machine", "",
        f"`{command}`; every figure below comes from this one run.",
        f"Machine: {m['cpu']}, {m['cores']} CPU cores, {m['ram_gb']} GB RAM, {'a GPU' if m['gpu'] else 'no GPU'}; "
        f"torch {m['torch']}, Ray {m['ray']}, Python {m['python']}. Ray started with num_cpus={RAY_CPUS}, on "
        f"127.0.0.1 only. Load average at start {[round(x, 2) for x in m['load_average_at_start']]}, at end "
        f"{[round(x, 2) for x in m['load_average_at_end']]} (anything else running on the machine moves the "
        "numbers).", "",
        "| measure | value | goal | |", "|---|---|---|---|",
        f"| rollout: 2 actors / 1 actor, problems/s | {fmt(res['rollout_speedup_2_actors'], '.2f')}x | "
        f">= {GOAL_SPEEDUP}x | {met('rollout_speedup_2_actors')} |",
        f"| rollout: 2 actors / 1 actor, tokens/s | {fmt(ro['speedup_tokens'], '.2f')}x | | |"]
    for size in ("10m", "100m"):
        for t, label in (("object_store", "object_store"), ("collective", "collective (ZeRO-1/2 flat weights)"),
                         ("collective_separate", "collective (separate tensors, ZeRO-3/stage 0)")):
            key = f"publish_ratio_{t}_{size}"
            if key in res:
                lines.append(f"| publish {size.upper()} params, {label} / raw broadcast | {res[key]:.2f}x | "
                             f"<= {GOAL_PUBLISH_RATIO}x | {met(key)} |")
    lines += [f"| training: async / sync, prompts/s | {fmt(res['async_over_sync_throughput'], '.2f')}x | "
              "none set (> 1: async helps) | |", ""]

    s, e = ro["search"], res["config"]["model.embedded"]
    lines += [
        "## 1. Rollout throughput", "",
        f"Model: the embedded Llama ({e['hidden_size']} wide, {e['num_layers']} layers), "
        + (f"bootstrapped for {ro['model']['bootstrap_steps']} SFT steps (round 0 of a run) so that searches end "
           "at answers as in training" if ro["model"]["weights"] == "bootstrapped" else "random weights")
        + f". Work: `RolloutPool.search` of the same {ro['problems']} generated train problems, {s['method']} "
        f"({s['simulations']} simulations, branching {s['branching']}, depth {s['max_depth']}, steps of at most "
        f"{s['step_max_tokens']} tokens, {s['backend']} backend), chunks of {ro['chunk_size']} handed out from a "
        f"queue. Each actor holds rollout.num_cpus={ro['num_cpus_per_actor']} in its own placement group and runs "
        f"{ro['threads_per_actor']} torch thread, so one actor uses one core. Every actor searches "
        f"{WARMUP_PROBLEMS} problems untimed first. Median of {ro['repeats']} timed searches per pool size, the "
        "sizes alternating. Searches sample, so the two sizes do not generate exactly the same tokens: "
        "tokens/s is the steadier measure of work.", "",
        "| actors | seconds | problems/s | tokens/s |", "|---|---|---|---|"]
    for a, md in ro["median"].items():
        lines.append(f"| {a} | {md['seconds']:.1f} | {md['problems_per_s']:.3f} | {md['tokens_per_s']:.0f} |")

    lines += ["", "## 2. Weight-publish latency", "",
              f"`bench/scaling_publish.py --sizes {pub['sizes_arg']} --repeats {pub['setup']['repeats']}` in a "
              "subprocess: one sender actor, two receivers, transformer-shaped float32 weights; median seconds of "
              f"{pub['setup']['repeats']} rounds after {pub['setup']['warmup']} warm-up rounds, each round after "
              f"{pub['setup']['gap_seconds']} s of idle (publishes follow training phases), and each transport's "
              "ratio to one raw broadcast of one flat buffer of the same bytes over the same gloo group (see that "
              "script's docstring). 'flat': the weights are views of one buffer, as the learner publishes them "
              "under ZeRO-1/2, so buckets are broadcast without a packing copy; 'separate': one allocation per "
              "tensor, so every bucket is packed first.", "",
              "| size | MB | raw broadcast s | object store s (ratio) | collective, flat s (ratio) "
              "| collective, separate s (ratio) |", "|---|---|---|---|---|---|"]
    for size, r in pub["sizes"].items():
        sec, rat = r["seconds"], r["ratio"]
        lines.append(f"| {size} | {r['bytes'] / 2**20:.0f} | {sec['raw']:.3f} | {sec['object_store']:.3f} "
                     f"({rat['object_store']:.2f}x) | {sec['collective']:.3f} ({rat['collective']:.2f}x) | "
                     f"{sec['collective_separate']:.3f} ({rat['collective_separate']:.2f}x) |")

    sy, asy = lp["sync"], lp["async"]
    lines += ["", "## 3. Sync against async training", "",
              f"`launch.controller.Controller` twice with configs/arithmetic.yaml and `{' '.join(lp['overrides'])}`, "
              "loop.mode=sync then async, each on a fresh Ray and run_dir. Throughput = train prompts searched per "
              "second of the summary rows' `seconds` over rounds 1..R (round 0, the bootstrap, left out; each round "
              "includes training, the push, evaluation and the checkpoint). In async mode round 1 searches "
              "before training as sync does; the overlap starts with round 2's search, which runs while round 1 "
              "trains. Idle times are means of the controller's own metrics over rounds 1..R: time/rollout_idle "
              "(the gap between the actors finishing one round's prompts and getting the next) and "
              "time/learner_idle (async: how long the learner waited for experience; in round 1 nothing was "
              "prefetched, so that is the whole first search); sync mode does not log "
              "the learner's idle time, and the learner's wait there is its time/search.", "",
              "| mode | rounds | prompts | seconds (rounds 1..R) | prompts/s | time/search | rollout idle s | "
              "learner idle s | greedy acc after | dropped trajectories |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in (sy, asy):
        lines.append(f"| {r['mode']} | {r['rounds']} | {r['prompts']} | {r['seconds_rounds_1_to_R']:.1f} | "
                     f"{r['prompts_per_s']:.3f} | {fmt(r['mean_time'].get('time/search'), '.1f')} | "
                     f"{fmt(r['rollout_idle_s'], '.1f')} | {fmt(r['learner_idle_s'], '.1f')} "
                     f"({r['learner_idle_source']}) | {r['final_greedy_acc']:.3f} | {r['dropped_trajectories']:.0f} |")
    lines += ["", f"async / sync throughput: {fmt(res['async_over_sync_throughput'], '.2f')}x."]
    (out_dir / "scaling.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "arithmetic.yaml"))
    ap.add_argument("--n", type=int, default=64, help="problems per timed rollout search")
    ap.add_argument("--repeats", type=int, default=2, help="timed rollout searches per pool size")
    ap.add_argument("--rollout-cpus", type=float, default=0.9, help="rollout.num_cpus of each actor in part 1")
    ap.add_argument("--bootstrap-steps", type=int, default=300,
                    help="SFT steps before the rollout part (0: random weights)")
    ap.add_argument("--publish-sizes", default="10m,100m")
    ap.add_argument("--publish-repeats", type=int, default=7, help="timed publish rounds per transport (after scaling_publish.py's warm-up rounds)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 4 problems, 4 simulations, 1 round, 10m publish only; numbers meaningless")
    ap.add_argument("--out-dir", default=None, help="default docs/results (--quick: /tmp/scaling_smoke)")
    ap.add_argument("overrides", nargs="*", help="dotted config overrides, applied to every part")
    args = ap.parse_args()
    overrides = list(args.overrides)
    loop_overrides = list(LOOP_OVERRIDES)
    if args.quick:
        args.n, args.repeats, args.bootstrap_steps = 4, 1, 10
        args.publish_sizes, args.publish_repeats = "10m", 1
        overrides = merged(QUICK_OVERRIDES, overrides)
        loop_overrides = merged(loop_overrides, QUICK_LOOP)
    command = "python bench/scaling.py " + " ".join(sys.argv[1:])
    prov = provenance()  # before measuring: the code and packages that ran
    load_at_start = os.getloadavg()
    t_start = time.perf_counter()
    # run_dir is required by the config but unused by parts 1 and 2; part 3 gives each run its own
    base_cfg = load_config(args.config, [*overrides, "run_dir=unused"])

    with tempfile.TemporaryDirectory(prefix="arbor_scaling_") as tmp_name:
        tmp = Path(tmp_name)
        print("[rollout] 1 and 2 actors", flush=True)
        rollout = rollout_part(base_cfg, n=args.n, repeats=args.repeats, num_cpus=args.rollout_cpus,
                               bootstrap_steps=args.bootstrap_steps, tmp=tmp)
        print(f"[publish] sizes {args.publish_sizes}", flush=True)
        publish = publish_part(args.publish_sizes, args.publish_repeats, tmp)
        publish["sizes_arg"] = args.publish_sizes
        loop_all = merged(loop_overrides, overrides)
        loop = {mode: loop_run(args.config, loop_all, mode, tmp / f"run_{mode}") for mode in ("sync", "async")}
        loop["overrides"] = loop_all

    res: dict = {
        **prov, "machine_details": machine(load_at_start), "command": command, "seconds": time.perf_counter() - t_start,
        "config": {"file": os.path.relpath(args.config, ROOT), "overrides": overrides,
                   "model.embedded": dataclasses.asdict(base_cfg.model.embedded)},
        "rollout_speedup_2_actors": rollout["speedup_problems"],
        "rollout_speedup_2_actors_tokens": rollout["speedup_tokens"],
        "rollout_problems_per_s_1_actor": rollout["median"]["1"]["problems_per_s"],
        "rollout_problems_per_s_2_actors": rollout["median"]["2"]["problems_per_s"],
        "rollout_tokens_per_s_1_actor": rollout["median"]["1"]["tokens_per_s"],
        "rollout_tokens_per_s_2_actors": rollout["median"]["2"]["tokens_per_s"]}
    for key, val in publish.items():
        if key.startswith(("publish_", "raw_broadcast_")):
            res[key] = val
    res["async_over_sync_throughput"] = loop["async"]["prompts_per_s"] / loop["sync"]["prompts_per_s"]
    res["train_prompts_per_s_sync"] = loop["sync"]["prompts_per_s"]
    res["train_prompts_per_s_async"] = loop["async"]["prompts_per_s"]
    res["goals"] = {"rollout_speedup_2_actors": {"goal": f">= {GOAL_SPEEDUP}",
                                                 "met": bool(res["rollout_speedup_2_actors"] >= GOAL_SPEEDUP)},
                    **{k: {"goal": f"<= {GOAL_PUBLISH_RATIO}", "met": bool(res[k] <= GOAL_PUBLISH_RATIO)}
                       for k in res if k.startswith("publish_ratio_")}}
    res |= {"rollout": rollout, "publish": publish, "loop": loop}
    out_dir = Path(args.out_dir or ("/tmp/scaling_smoke" if args.quick else ROOT / "docs" / "results"))
    write_report(out_dir, res, command)
    print((out_dir / "scaling.md").read_text())
    print(f"wrote {out_dir / 'scaling.json'} and {out_dir / 'scaling.md'} in {res['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
