"""Generation throughput of the engine under an MCTS workload, against model.generate.

Not a test: it measures. Usage:

    python bench/engine.py                                   # both sizes; a few minutes on 2 cores
    python bench/engine.py --sizes embedded --problems 4     # a quick look

For each model size (the embedded Llama, and a ~34M-parameter Llama of the same family) it
  1. builds the model with random weights and gives it the short supervised warm-up the embedded
     pipeline gives its policy (rl.config.BootstrapConfig), so steps end at newlines as in real
     searches instead of running to the token cap,
  2. runs MCTS (simulations=16, branching=3) on `--problems` arithmetic problems with
       naive       the current Policy: one model.generate per node expansion, problems one after another
       engine-seq  the Engine with the same call pattern (problems one after another)
       engine      the Engine with one thread per problem, so the searches share decode batches
  3. replays the engine run's calls as raw batched model.generate (calls grouped so that each generate
     holds as many sequences as the concurrent searches do), the ceiling for plain HF generation.
The value critic is a hash of the state (cheap and deterministic) so that the numbers measure
generation, and terminal nodes are scored by the verifier. Tokens/s = generated tokens / wall seconds
of the workload (for the ceiling: of the generate calls).

Writes docs/results/engine.md and docs/results/engine.json (with bench/provenance.py's commit, versions and
machine at its top level; the CPU, threads and load average under machine_details).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Sleep, not spin, while waiting at OpenMP barriers: on a machine shared with other jobs a spinning
# thread steals the core its partner needs, and 2-thread steps of tiny models slow down 30x or more.
# Set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.provenance import provenance  # noqa: E402
from rl.config import ArithmeticConfig, BootstrapConfig, EmbeddedModelConfig  # noqa: E402
from rl.losses import sft_batch, sft_loss  # noqa: E402
from rl.models.embedded import build_embedded_model  # noqa: E402
from rl.models.engine import Engine  # noqa: E402
from rl.models.policy import Policy  # noqa: E402
from rl.search import MCTS, Budget, Models  # noqa: E402
from rl.tasks import ArithmeticTask  # noqa: E402

SIZES = {
    "embedded": EmbeddedModelConfig(hidden_size=64, num_layers=2, intermediate_size=192),
    "large": EmbeddedModelConfig(hidden_size=512, num_layers=10, num_heads=8, intermediate_size=1536,
                                 max_positions=1024),
}
# warm-up: the embedded pipeline's bootstrap; fewer, smaller steps for the large model (CPU time)
WARMUP = {"embedded": BootstrapConfig(steps=150, batch_size=32, lr=3e-3),
          "large": BootstrapConfig(steps=40, batch_size=16, lr=1e-3)}
PROBLEM_SEED = 2024
MAX_LEN = 96  # warm-up sequence cap: prompt + worked solution of the default arithmetic task fit easily


class HashCritic:
    """V(s) from a hash of the state: deterministic, varied, and free next to generation."""
    version = 0

    def score(self, states):
        return np.array([(zlib.crc32(s.encode()) % 1000) / 1000 for s in states], dtype=np.float64)


class Recorder:
    """Wraps a policy backend: counts generated tokens and records every call (thread-safe)."""

    def __init__(self, inner):
        self.inner = inner
        self.version = inner.version
        self.tokens = 0
        self.seconds = 0.0     # summed over calls (overlapping calls count twice)
        self.calls: list[tuple] = []
        self._lock = threading.Lock()

    def sample_steps(self, prefixes, n, *, temperature=1.0, max_new_tokens=24, seed=None):
        t0 = time.perf_counter()
        out = self.inner.sample_steps(prefixes, n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
        self._record(t0, ("steps", prefixes, n, temperature, max_new_tokens), sum(s.num_tokens for r in out for s in r))
        return out

    def complete(self, prefixes, *, max_new_tokens=128, temperature=0.0, seed=None):
        t0 = time.perf_counter()
        out = self.inner.complete(prefixes, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        self._record(t0, ("complete", prefixes, 1, temperature, max_new_tokens), sum(s.num_tokens for s in out))
        return out

    def _record(self, t0, call, tokens):
        with self._lock:
            self.seconds += time.perf_counter() - t0
            self.tokens += tokens
            self.calls.append(call)


def warm_up(path: Path, task: ArithmeticTask, cfg: BootstrapConfig, seed: int = 0) -> float:
    """A short SFT on gold solutions, saved back to path; returns the last loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    problems = task.generate(cfg.batch_size * 20, seed, "train")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(seed)
    loss = float("nan")
    model.train()
    for _ in range(cfg.steps):
        idx = rng.choice(len(problems), cfg.batch_size, replace=False)
        batch = sft_batch(tok, [task.prompt(problems[i]) for i in idx], [problems[i].solution for i in idx], MAX_LEN)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        step_loss = sft_loss(out.logits, batch["labels"])
        opt.zero_grad()
        step_loss.backward()
        opt.step()
        loss = float(step_loss.detach())
    model.save_pretrained(str(path))
    return loss


def run_mcts(policy, task, problems, search: MCTS, *, threads: bool) -> float:
    """Wall seconds to search every problem, one after another or one thread per problem."""
    models = Models(policy=policy, value=HashCritic(), reward=task.reward)

    def one(i):
        return search(problems[i], task, models, Budget(), np.random.default_rng(i))

    t0 = time.perf_counter()
    if threads:
        with ThreadPoolExecutor(max_workers=len(problems)) as pool:
            list(pool.map(one, range(len(problems))))
    else:
        for i in range(len(problems)):
            one(i)
    return time.perf_counter() - t0


@torch.no_grad()
def batched_generate(policy: Policy, calls: list[tuple], batch: int) -> tuple[int, float]:
    """Replay calls as raw model.generate, packing calls of one kind until a generate holds `batch` sequences.

    Returns generated tokens (up to and including each sequence's stop token) and seconds in generate.
    """
    tok, model = policy.tokenizer, policy.model
    tokens, seconds = 0, 0.0
    for kind in ("steps", "complete"):
        todo = [c for c in calls if c[0] == kind]
        stops = [policy.newline_id, tok.eos_token_id] if kind == "steps" else [tok.eos_token_id]
        i = 0
        while i < len(todo):
            n, temperature, max_new = todo[i][2], todo[i][3], todo[i][4]
            group = []
            while i < len(todo) and todo[i][2:] == (n, temperature, max_new) and (len(group) + 1) * n <= max(batch, n):
                group += todo[i][1]
                i += 1
            enc = tok(group, return_tensors="pt", padding=True, add_special_tokens=False)
            greedy = temperature <= 0
            t0 = time.perf_counter()
            out = model.generate(**enc, max_new_tokens=max_new, do_sample=not greedy,
                                 temperature=None if greedy else temperature, top_p=None, top_k=None,
                                 num_return_sequences=n, eos_token_id=stops, pad_token_id=tok.pad_token_id)
            seconds += time.perf_counter() - t0
            for row in out[:, enc["input_ids"].shape[1]:].tolist():
                length = len(row)
                for j, t in enumerate(row):
                    if t in stops:
                        length = j + 1
                        break
                tokens += length
    return tokens, seconds


BACKENDS = ("naive", "engine_sequential", "engine", "batched_generate")


def one_round(name: str, path: Path, policy: Policy, task, problems, search: MCTS, args) -> dict:
    """Every backend once, in a fixed order, on the same problems; {backend: measurement}."""
    out = {}

    def record(key, tokens, seconds, **extra):
        out[key] = {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, **extra}
        print(f"[{name}] {key:18s} {tokens:7d} tokens {seconds:8.2f}s {tokens / seconds:9.1f} tok/s", flush=True)

    rec = Recorder(policy)
    seconds = run_mcts(rec, task, problems, search, threads=False)
    record("naive", rec.tokens, seconds, policy_calls=len(rec.calls))
    for key, threads in (("engine_sequential", False), ("engine", True)):
        engine = Engine.from_pretrained(path, device="cpu", max_batch_size=args.max_batch_size)
        rec = Recorder(engine)
        seconds = run_mcts(rec, task, problems, search, threads=threads)
        record(key, rec.tokens, seconds, policy_calls=len(rec.calls), stats=engine.stats())
    # the ceiling: the engine run's calls as plain batched generate, as many sequences per call as searches
    batch = len(problems) * args.branching
    tokens, seconds = batched_generate(policy, rec.calls, batch)
    record("batched_generate", tokens, seconds, sequences_per_generate=batch)
    return out


def bench_size(name: str, cfg: EmbeddedModelConfig, args, task: ArithmeticTask, work: Path) -> dict:
    path = build_embedded_model(cfg, work / name, seed=0)
    t0 = time.perf_counter()
    loss = warm_up(path, task, WARMUP[name])
    warm_seconds = time.perf_counter() - t0
    n_problems = args.problems if name == "embedded" else args.problems_large
    repeats = args.repeats if name == "embedded" else args.repeats_large
    problems = task.generate(n_problems, PROBLEM_SEED, "eval")
    search = MCTS(simulations=args.simulations, branching=args.branching)
    policy = Policy.from_pretrained(path, device="cpu")
    params = sum(p.numel() for p in policy.model.parameters())
    print(f"[{name}] {params / 1e6:.2f}M parameters, warm-up loss {loss:.3f} ({warm_seconds:.0f}s), "
          f"{n_problems} problems, {repeats} rounds", flush=True)
    rounds = [one_round(name, path, policy, task, problems, search, args) for _ in range(repeats)]
    # the machine is shared: report each backend's median round, and every round in the JSON
    res: dict = {"params": params, "problems": n_problems, "warmup_loss": loss, "rounds": rounds}
    for key in BACKENDS:
        tps = sorted(r[key]["tokens_per_s"] for r in rounds)
        res[key] = {**sorted((r[key] for r in rounds), key=lambda m: m["tokens_per_s"])[len(rounds) // 2],
                    "tokens_per_s": float(np.median(tps)), "tokens_per_s_range": [tps[0], tps[-1]]}
    ratios = {"speedup_vs_naive": ("engine", "naive"), "speedup_sequential_vs_naive": ("engine_sequential", "naive"),
              "ratio_vs_batched_generate": ("engine", "batched_generate")}
    for out_key, (num, den) in ratios.items():
        res[out_key] = res[num]["tokens_per_s"] / res[den]["tokens_per_s"]
        per_round = sorted(r[num]["tokens_per_s"] / r[den]["tokens_per_s"] for r in rounds)
        res[out_key + "_range"] = [per_round[0], per_round[-1]]
    return res


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in load] if load else None}


def write_markdown(path: Path, out: dict) -> None:
    m, w = out["machine_details"], out["workload"]
    lines = [
        "# Engine throughput under an MCTS workload",
        "",
        "Generated by `python bench/engine.py` (see its docstring for the method).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores (shared with other jobs; load average "
        f"{m['load_average_at_start']} at start), torch {m['torch']} CPU with {m['torch_threads']} threads "
        f"(OMP_WAIT_POLICY={m['omp_wait_policy']}), "
        f"transformers {m['transformers']}, Python {m['python']}.",
        "",
        f"Workload: MCTS(simulations={w['simulations']}, branching={w['branching']}) on arithmetic eval problems "
        f"(default task config), steps of at most 24 tokens at temperature 1, a greedy completion of the chosen "
        f"path; hash critic, verifier rewards. Engine: max_batch_size={w['max_batch_size']}, prefix cache "
        f"32768 tokens. Models: random Llama weights after a short SFT warm-up so that steps end at newlines.",
        "",
        "| model | params | problems x rounds | naive tok/s | engine (sequential) tok/s | engine (threads) tok/s "
        "| batched generate tok/s | speedup vs naive | sequential speedup | ratio vs batched generate |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in out["sizes"].items():
        def tps(key):
            lo, hi = r[key]["tokens_per_s_range"]
            return f"{r[key]['tokens_per_s']:.0f}" + (f" ({lo:.0f}-{hi:.0f})" if len(r["rounds"]) > 1 else "")

        def ratio(key, unit=""):
            lo, hi = r[key + "_range"]
            return f"{r[key]:.2f}{unit}" + (f" ({lo:.2f}-{hi:.2f})" if len(r["rounds"]) > 1 else "")
        lines.append(f"| {name} | {r['params'] / 1e6:.2f}M | {r['problems']} x {len(r['rounds'])} | {tps('naive')} "
                     f"| {tps('engine_sequential')} | {tps('engine')} | {tps('batched_generate')} "
                     f"| {ratio('speedup_vs_naive', 'x')} | {ratio('speedup_sequential_vs_naive', 'x')} "
                     f"| {ratio('ratio_vs_batched_generate')} |")
    lines += ["", "Medians over rounds (each round runs every backend once, in the order of the columns); "
              "the range over rounds in parentheses (the machine is shared with other jobs, so rounds vary). "
              "Batched generate replays the engine run's calls but re-encodes every prompt (no prefix reuse) "
              "and keeps finished rows in the batch until its longest row ends; the engine reuses cached "
              "prefixes and refills finished slots at once, which is how it can beat this ceiling.", ""]
    lines += ["Goals: >= 10x naive on the embedded model, >= 4x on the larger one, >= 0.7x batched generate.", ""]
    for name, r in out["sizes"].items():
        s = r["engine"]["stats"]
        lines.append(f"- {name}: engine (threads) generated {r['engine']['tokens']} tokens in "
                     f"{r['engine']['seconds']:.1f}s (naive: {r['naive']['tokens']} in {r['naive']['seconds']:.1f}s); "
                     f"largest decode batch {s['max_batch']}, {s['steps']} decode steps, prefix cache "
                     f"{s['cache_hits']}/{s['cache_lookups']} hits reusing {s['reused_tokens']} tokens "
                     f"(prefilled {s['prefill_tokens']}), {s['evictions']} evictions.")
    lines.append("")
    path.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="embedded,large")
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--problems-large", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of every backend on the embedded model")
    ap.add_argument("--repeats-large", type=int, default=1, help="rounds on the larger model (minutes each)")
    ap.add_argument("--simulations", type=int, default=16)
    ap.add_argument("--branching", type=int, default=3)
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--out-dir", default="docs/results")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    task = ArithmeticTask(ArithmeticConfig())
    # commit, versions, machine (a one-line summary) before measuring; the details of the machine beside them
    out = {**provenance(), "machine_details": machine(),
           "workload": {"simulations": args.simulations, "branching": args.branching,
                        "max_batch_size": args.max_batch_size, "problem_seed": PROBLEM_SEED},
           "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sizes.split(","):
            out["sizes"][name] = bench_size(name, SIZES[name], args, task, Path(tmp))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "engine.json").write_text(json.dumps(out, indent=2))
    write_markdown(out_dir / "engine.md", out)
    print(f"wrote {out_dir / 'engine.md'} and {out_dir / 'engine.json'}")


if __name__ == "__main__":
    main()
