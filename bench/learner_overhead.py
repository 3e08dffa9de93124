"""Learner overhead: one DeepSpeed training step against one plain torch AdamW step, same model, same batch.

Not a test: it measures. Usage:

    python bench/learner_overhead.py                       # ZeRO 0-3 with 1 and 2 ranks -> docs/results
    python bench/learner_overhead.py --steps 5 --warmup 1 --out-dir /tmp/lo   # a smoke run

The model is configs/arithmetic.yaml's embedded tiny Llama (rl/models/embedded.py), built once with seed 0.
The batch is --batch random token sequences of --seq-len tokens (labels = inputs, every position counted),
the same every step. The DeepSpeed side is what learners/learner.py builds: a torch AdamW client optimizer
handed to deepspeed.initialize with learners.learner.ds_config (gradient clipping 1.0, fp32 on CPU, gloo);
the torch side is the same model copy with torch.optim.AdamW and clip_grad_norm_(1.0). One step =
forward + backward + optimizer step, timed each part with time.perf_counter (torch on CPU runs synchronously).

Ranks: each setting runs in freshly spawned processes (torch.multiprocessing, a loopback TCP store on a free
port). With 2 ranks the DeepSpeed step is rank 0's wall time for its half of the global batch, gradients
averaged over both ranks; the torch step is a single process's step on the whole global batch (the work the
two ranks share), timed on rank 0 while rank 1 waits at a barrier. So the 2-rank ratio < 1 would mean the
data-parallel split pays for its communication.

Interleaved: every iteration does one torch step and then one DeepSpeed step, so load from other jobs on a
shared machine hits both alike; --warmup iterations are dropped and the medians of --steps kept.
Threads: OMP_NUM_THREADS=1 and torch.set_num_threads(1) in every process.

Writes learner_overhead.json (bench/provenance.py's fields at the top level, then `rows`, one per setting:
zero_stage, ranks, ratio = deepspeed_median_s / torch_median_s, the two medians, and the per-part medians)
and learner_overhead.md to --out-dir (--md-only rewrites the md from the json; a "notes" list in the json,
added by hand after reading a profile, becomes its Findings section).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTS = ("forward", "backward", "step")


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def _worker(rank: int, world: int, port: int, stage: int, model_dir: str, args: dict, out_file: str) -> None:
    os.environ.update(OMP_NUM_THREADS="1", LOCAL_RANK=str(rank))
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM
    from learners.dist import init_group
    from learners.learner import ds_config
    from rl.config import LearnerConfig
    import deepspeed

    init_group(rank, world, "127.0.0.1", port)
    batch_size, seq_len = args["batch"], args["seq_len"]
    g = torch.Generator().manual_seed(0)
    vocab = AutoModelForCausalLM.from_pretrained(model_dir).config.vocab_size
    ids = torch.randint(4, vocab, (batch_size, seq_len), generator=g)
    full = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    micro = batch_size // world
    mine = {k: v[rank * micro:(rank + 1) * micro] for k, v in full.items()}

    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ref.train()
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    cfg = LearnerConfig(zero_stage=stage, batch_size=batch_size)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds_config(cfg, False, world))
    engine.train()

    def torch_step() -> list[float]:
        t0 = time.perf_counter()
        loss = ref(**full).loss
        t1 = time.perf_counter()
        ref_opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        ref_opt.step()
        t3 = time.perf_counter()
        return [t1 - t0, t2 - t1, t3 - t2]

    def ds_step() -> list[float]:
        t0 = time.perf_counter()
        loss = engine(**mine).loss
        t1 = time.perf_counter()
        engine.backward(loss)
        t2 = time.perf_counter()
        engine.step()
        t3 = time.perf_counter()
        return [t1 - t0, t2 - t1, t3 - t2]

    tt, dd = [], []
    for i in range(args["warmup"] + args["steps"]):
        if world > 1:
            dist.barrier()
        t = torch_step() if rank == 0 else None
        if world > 1:
            dist.barrier()
        d = ds_step()
        if i >= args["warmup"] and rank == 0:
            tt.append(t)
            dd.append(d)
    if rank == 0:
        row = {"zero_stage": stage, "ranks": world,
               "deepspeed_median_s": _median([sum(x) for x in dd]),
               "torch_median_s": _median([sum(x) for x in tt])}
        row["ratio"] = row["deepspeed_median_s"] / row["torch_median_s"]
        row["deepspeed_parts_median_s"] = {p: _median([x[j] for x in dd]) for j, p in enumerate(PARTS)}
        row["torch_parts_median_s"] = {p: _median([x[j] for x in tt]) for j, p in enumerate(PARTS)}
        row["micro_batch_per_rank"] = micro
        Path(out_file).write_text(json.dumps(row))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    from rl.transport import bind_free_port
    s = bind_free_port()
    port = s.getsockname()[1]
    s.close()
    return port


GOAL = 1.15   # the bound on the ratio at ZeRO-0/1/2 with one rank


def write_md(out: dict, path: Path) -> None:
    """learner_overhead.md from the JSON: the table, the per-part medians and, per setting over GOAL, the part
    whose DeepSpeed median exceeds torch's the most."""
    m = out["model"]
    lines = [
        "# Learner overhead: a DeepSpeed step against a plain torch AdamW step",
        "",
        f"`{out['command']}` on {out['date']}, commit `{out['commit']}`; machine: {out['machine']}, "
        "**shared with other jobs** (other helpers' tests and benchmarks ran at the same time, load average "
        "well above the 2 cores), so absolute times are noisy; torch and DeepSpeed steps alternate every "
        "iteration so that load hits both alike. Versions: "
        + ", ".join(f"{k} {v}" for k, v in out["versions"].items()) + ".",
        "",
        f"Model: configs/arithmetic.yaml's embedded Llama ({m['parameters']:,} parameters, hidden "
        f"{m['embedded']['hidden_size']}, {m['embedded']['num_layers']} layers), fp32 on CPU, one thread per "
        f"process. Batch: {out['batch']} sequences x {out['seq_len']} tokens (global; with 2 ranks each rank "
        f"takes {out['batch'] // 2}). One step = forward + backward + AdamW step with gradient clipping 1.0; "
        f"medians of {out['steps']} steps after {out['warmup']} warm-up steps. DeepSpeed: learners/learner.py's "
        "ds_config (torch AdamW as client optimizer, gloo). With 2 ranks the torch step is one process's step "
        "on the whole global batch (what the two ranks share) and the DeepSpeed step is rank 0's wall time "
        "for its half including the gradient all-reduce.",
        "",
        "| ZeRO | ranks | DeepSpeed step (ms) | torch step (ms) | ratio | goal |",
        "|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        goal = (("met" if r["ratio"] <= GOAL else "**over**") if r["ranks"] == 1 and r["zero_stage"] <= 2
                else "-")
        lines.append(f"| {r['zero_stage']} | {r['ranks']} | {r['deepspeed_median_s'] * 1e3:.1f} | "
                     f"{r['torch_median_s'] * 1e3:.1f} | {r['ratio']:.3f} | {goal} |")
    lines += ["", f"Goal: ratio <= {GOAL} at ZeRO-0/1/2 with one rank.", "",
              "## Where the time goes (median ms per part: DeepSpeed / torch)", "",
              "| ZeRO | ranks | forward | backward | optimizer step | largest excess |", "|---|---|---|---|---|---|"]
    for r in out["rows"]:
        d, t = r["deepspeed_parts_median_s"], r["torch_parts_median_s"]
        excess = {p: d[p] - t[p] for p in PARTS}
        worst = max(excess, key=excess.get)
        lines.append(f"| {r['zero_stage']} | {r['ranks']} | " + " | ".join(
            f"{d[p] * 1e3:.1f} / {t[p] * 1e3:.1f}" for p in PARTS) + f" | {worst} (+{excess[worst] * 1e3:.1f} ms) |")
    lines += ["", "(The torch parts in 2-rank rows are for the whole batch, the DeepSpeed parts for half of it.)"]
    if out.get("notes"):
        lines += ["", "## Findings", "", *out["notes"]]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32, help="global batch (learner.batch_size's default)")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--out-dir", default=str(ROOT / "docs" / "results"))
    ap.add_argument("--md-only", action="store_true",
                    help="rewrite learner_overhead.md from the learner_overhead.json in --out-dir, measure nothing")
    a = ap.parse_args(argv)
    out_dir = Path(a.out_dir)
    if a.md_only:
        write_md(json.loads((out_dir / "learner_overhead.json").read_text()), out_dir / "learner_overhead.md")
        return

    from bench.provenance import provenance
    prov = provenance()
    import torch.multiprocessing as mp
    from rl.config import load_config
    from rl.models.embedded import build_embedded_model

    cfg = load_config(ROOT / "configs" / "arithmetic.yaml")
    args = {"steps": a.steps, "warmup": a.warmup, "batch": a.batch, "seq_len": a.seq_len}
    rows = []
    t_start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_embedded_model(cfg.model.embedded, Path(tmp) / "model", seed=0))
        n_params = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM
                       .from_pretrained(model_dir).parameters())
        for world in a.ranks:
            for stage in a.stages:
                out_file = str(Path(tmp) / f"row_{stage}_{world}.json")
                t0 = time.time()
                mp.spawn(_worker, args=(world, _free_port(), stage, model_dir, args, out_file), nprocs=world,
                         join=True)
                row = json.loads(Path(out_file).read_text())
                rows.append(row)
                print(f"ZeRO-{stage} x{world}: deepspeed {row['deepspeed_median_s'] * 1e3:.1f} ms, torch "
                      f"{row['torch_median_s'] * 1e3:.1f} ms, ratio {row['ratio']:.3f} ({time.time() - t0:.0f}s)",
                      flush=True)
    out = {**prov, "command": "python bench/learner_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "model": {"embedded": vars(cfg.model.embedded), "parameters": n_params},
           "batch": a.batch, "seq_len": a.seq_len, "steps": a.steps, "warmup": a.warmup,
           "seconds": round(time.time() - t_start, 1), "rows": rows}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "learner_overhead.json").write_text(json.dumps(out, indent=1))
    write_md(out, out_dir / "learner_overhead.md")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
