"""How well each critic ranks the policy's own candidates on held-out problems. Not a test: it measures.

    python bench/critic_quality.py                    # ~30 min on 2 CPU cores
    python bench/critic_quality.py --train-problems 500 --eval-problems 100 --out-dir /tmp/cq   # a quick look

One run, from the shipped recipe (configs/arithmetic.yaml): the embedded policy is bootstrapped as `arbor
train` does (bootstrap.steps at bootstrap.lr), samples --samples solutions per problem at the search
temperature for --train-problems training problems and --eval-problems held-out ones (the task's eval
split: disjoint questions, checked below), and every critic is trained by the learner code the loop runs
(learners/learner.py, one DeepSpeed rank) on labels made from the training samples only:

  head critics (learner.critic_model: head), BCE on a scalar head started from the bootstrapped policy:
    orm    outcome labels: the verifier reward of each complete sample
    value  Monte Carlo targets: per prefix, the mean reward of the problem's samples that share it
    prm    step-check labels: whether every step of the prefix is right (the task's step check)
    q      best reward below: per prefix, the best reward of the samples that share it (Q*'s rollout labels)
  generative (learner.critic_model: generative, what the loop's V, PRM and ORM are): the policy LM
    fine-tuned on the verified samples (reward 1, outcome labels only) by Learner.train_verifier; its score
    is the probability of the least likely step token (rl/models/critic.py)
  policy log-prob: the bootstrapped policy itself scored the same way, untrained (a reference)

Each critic is measured on the held-out samples: within-problem AUC of complete solutions against the
verifier reward (mean over problems with right and wrong samples), pooled AUC, ECE, best-of-N accuracy
(the top-scored sample), and within-problem AUC of step prefixes against the step check; beside them
sc@N (majority answer), a random pick and pass@N. Learning curves: over the number of training problems
(generative and head ORM), over SFT steps (generative), over critic size (a fresh --big-size model).

Writes docs/results/critic_quality.{json,md}; the JSON starts with the commit and package versions.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.provenance import provenance  # noqa: E402
from learners.learner import Learner  # noqa: E402
from rl.config import EmbeddedModelConfig, LearnerConfig, load_config  # noqa: E402
from rl.metrics import binary_auc, expected_calibration_error, within_problem_auc  # noqa: E402
from rl.models.critic import verifier_logprobs  # noqa: E402
from rl.models.embedded import build_embedded_model  # noqa: E402
from rl.models.policy import Policy  # noqa: E402
from rl.rft import sample_solutions  # noqa: E402
from rl.tasks import build_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BOOTSTRAP_SEED, TRAIN_SEED, EVAL_SEED = 10**6, 71, 72


def prefixes(prompt: str, solution: str) -> list[str]:
    """prompt + the first k step lines of solution, k = 1..steps (each ends with its newline)."""
    lines = solution.splitlines(keepends=True)
    return [prompt + "".join(lines[:k + 1]) for k in range(len(lines))]


def prefix_labels(samples, task) -> dict[str, list]:
    """Per distinct (problem, prefix): Monte Carlo mean reward and best reward of the samples through it,
    and the step check (all steps so far right). Returns columns text, pid, mc, best, step."""
    through: dict[tuple[str, str], list[float]] = defaultdict(list)
    for s in samples:
        for t in prefixes(s.prompt, s.solution):
            through[(s.problem_id, t)].append(s.reward)
    cols = {"text": [], "pid": [], "mc": [], "best": [], "step": []}
    for (pid, text), rewards in through.items():
        cols["text"].append(text)
        cols["pid"].append(pid)
        cols["mc"].append(float(np.mean(rewards)))
        cols["best"].append(float(np.max(rewards)))
        cols["step"].append(float(min(task.step_utilities(text.rstrip("\n")), default=0.0)))
    return cols


def ranking(scores: np.ndarray, ev, ev_prefix) -> dict:
    """The metrics of one critic's scores of the held-out complete samples (ev) and prefixes."""
    rewards = np.array([s.reward for s in ev])
    pids = [s.problem_id for s in ev]
    auc_w, n_w = within_problem_auc(scores, rewards, pids)
    by: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(pids):
        by[p].append(i)
    bon = float(np.mean([rewards[idx[int(np.argmax(scores[idx]))]] for idx in by.values()]))
    out = {"auc_within": auc_w, "auc_within_problems": n_w, "auc_pooled": binary_auc(scores, rewards),
           "ece": expected_calibration_error(np.clip(scores, 0, 1), rewards), "bon_acc": bon}
    if ev_prefix is not None:
        ps = ev_prefix["scores"]
        out["step_auc_within"], out["step_auc_within_problems"] = within_problem_auc(ps, np.array(ev_prefix["step"]),
                                                                                     ev_prefix["pid"])
    return out


def baselines(ev, task, problems) -> dict:
    by: dict[str, list] = defaultdict(list)
    for s in ev:
        by[s.problem_id].append(s)
    gold = {p.id: p for p in problems}
    sc = []
    for pid, group in by.items():
        answers = [a for a in (task.extract_answer(s.solution) for s in group) if a is not None]
        vote = Counter(answers).most_common(1)[0][0] if answers else None
        sc.append(float(task.is_correct(gold[pid], vote)))
    return {"sc_acc": float(np.mean(sc)),
            "random_acc": float(np.mean([np.mean([s.reward for s in g]) for g in by.values()])),
            "pass_at_n": float(np.mean([max(s.reward for s in g) for g in by.values()])),
            "sample_acc": float(np.mean([s.reward for s in ev]))}


ROLES = {"generative": ("v", "generative"), "policy log-prob": ("v", "policy, untrained"), "head orm": ("orm", "head"),
         "head value": ("v", "head"), "head prm": ("prm", "head"), "head q": ("q", "head")}
LABELS = {"outcome (verified samples)": "outcome", "outcome (reward of the sample)": "outcome", "none": "none",
          "Monte Carlo mean reward through the prefix": "monte_carlo", "step check of the prefix": "step_check",
          "best reward through the prefix (rollout)": "best_rollout"}
OUTCOME_ONLY = {"outcome", "monte_carlo", "best_rollout"}  # labels made from final rewards alone (no step check)


def finalize(row: dict, base: dict, n: int, policy_size: str) -> dict:
    """A measured row with the fields other tools read: critic (v, prm, orm, q), model, labels (a code),
    critic_size, bo8_acc, sc8_acc, random_acc, pass8 (N = --samples), and recipe (the loop's default: the
    generative verifier at the policy's size trained on every training problem)."""
    if "model" in row:
        return row
    critic, model = ROLES[row["critic"]]
    labels = LABELS[row["labels"]]
    out = {"critic": critic, "model": model, "labels": labels, "labels_detail": row["labels"],
           "outcome_only": labels in OUTCOME_ONLY, "critic_size": row["size"],
           **{k: v for k, v in row.items() if k not in ("critic", "labels", "size", "bon_acc")},
           f"bo{n}_acc": row["bon_acc"], f"sc{n}_acc": base["sc_acc"], "random_acc": base["random_acc"],
           f"pass{n}": base["pass_at_n"]}
    out["recipe"] = model == "generative" and row["size"] == policy_size and row.get("main", False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/arithmetic.yaml"))
    ap.add_argument("--train-problems", type=int, default=2000)
    ap.add_argument("--eval-problems", type=int, default=300)
    ap.add_argument("--samples", type=int, default=8, help="solutions per problem (N of best-of-N, sc@N)")
    ap.add_argument("--head-epochs", type=int, default=2)
    ap.add_argument("--max-prefix-texts", type=int, default=16000, help="prefix examples per head critic")
    ap.add_argument("--verifier-steps", default="100,200,400,800", help="SFT steps at which the generative critic is measured")
    ap.add_argument("--n-curve", default="250,500,1000", help="training problems of the smaller-data rows")
    ap.add_argument("--curve-steps", type=int, default=400, help="SFT steps of the generative n-curve rows")
    ap.add_argument("--big-size", default="128,4", help="hidden,layers of the fresh critic of the size rows ('' skips)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    ap.add_argument("--out-dir", default=str(ROOT / "docs/results"))
    ap.add_argument("--rebuild", action="store_true", help="rewrite the md (and the JSON's row fields) from "
                    "OUT_DIR/critic_quality.json without measuring")
    args = ap.parse_args()
    if args.rebuild:
        path = Path(args.out_dir) / "critic_quality.json"
        out = json.loads(path.read_text())
        n, size = out["samples_per_problem"], out.get("policy_size", "64x2")
        out["policy_size"] = size
        out["rows"] = [finalize({**r, "main": True}, out["baselines"], n, size) for r in out["rows"]]
        out["curves"] = [finalize(r, out["baselines"], n, size) for r in out["curves"]]
        path.write_text(json.dumps(out, indent=1))
        (path.parent / "critic_quality.md").write_text(table(out))
        print(table(out))
        return
    prov = provenance()  # before measuring: the commit of the code that runs
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    task = build_task(cfg.task)
    train_p = task.generate(args.train_problems, TRAIN_SEED, "train")
    eval_p = task.generate(args.eval_problems, EVAL_SEED, "eval")
    overlap = {p.question for p in train_p} & {p.question for p in eval_p}
    if overlap:
        raise SystemExit(f"training and held-out problems share {len(overlap)} questions, e.g. {sorted(overlap)[0]!r}")
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="critic_quality_"))
    emb = cfg.model.embedded
    base = build_embedded_model(emb, work / "base", seed=cfg.seed)
    lcfg = dict(zero_stage=cfg.learner.zero_stage, batch_size=cfg.learner.batch_size,
                value_lr=cfg.learner.value_lr, critic_lr=cfg.learner.critic_lr, max_seq_len=cfg.learner.max_seq_len)
    gen = Learner(LearnerConfig(**lcfg, critic_model="generative"), str(base), str(base), seed=args.seed)
    boot = task.generate(cfg.bootstrap.examples, cfg.seed + BOOTSTRAP_SEED, "train")
    gen.train_policy([task.prompt(p) for p in boot], [p.solution for p in boot], steps=cfg.bootstrap.steps,
                     lr=cfg.bootstrap.lr)
    policy_dir = work / "policy"
    gen.policy.module.save_pretrained(str(policy_dir))
    gen.tokenizer.save_pretrained(str(policy_dir))
    gen.init_value_from_policy()
    t0 = time.perf_counter()
    policy = Policy.from_pretrained(policy_dir, device="cpu")
    rng = np.random.default_rng(args.seed)
    kw = dict(n=args.samples, temperature=cfg.search.temperature, max_new_tokens=96, batch_size=128, rng=rng)
    train_s = sample_solutions(train_p, task, policy, **kw)
    eval_s = sample_solutions(eval_p, task, policy, **kw)
    sample_seconds = time.perf_counter() - t0
    print(f"sampled {len(train_s)} + {len(eval_s)} in {sample_seconds:.0f} s; train acc "
          f"{np.mean([s.reward for s in train_s]):.3f}", flush=True)
    ev_texts = [s.prompt + s.solution for s in eval_s]
    ev_prefix = prefix_labels(eval_s, task)
    rows, curves = [], []

    def measure(name: str, score_fn, **info) -> dict:
        t = time.perf_counter()
        scores = np.asarray(score_fn(ev_texts))
        pre = {**ev_prefix, "scores": np.asarray(score_fn(ev_prefix["text"]))}
        row = {"critic": name, **info, **ranking(scores, eval_s, pre), "score_seconds": time.perf_counter() - t}
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        return row

    def verifier_score(model):
        model.eval()
        return lambda texts: np.exp(verifier_logprobs(model, gen.tokenizer, texts, "cpu", 128))

    rows.append(measure("policy log-prob", verifier_score(gen.policy.module), labels="none", n_train=0,
                        size=f"{emb.hidden_size}x{emb.num_layers}", steps=0))

    def verified(samples):
        return list(dict.fromkeys(s.prompt + s.solution for s in samples if s.reward == 1.0))

    # generative: the steps curve on every training problem
    gen.add_verified(verified(train_s))
    done, step_curve = 0, [int(x) for x in args.verifier_steps.split(",")]
    last = step_curve[-1]
    for steps in step_curve:
        m = gen.train_verifier("value", steps=steps - done)
        done = steps
        row = measure("generative", lambda t: gen.critic_scores("value", t), labels="outcome (verified samples)",
                      n_train=len(train_p), verified=len(gen.verified), size=f"{emb.hidden_size}x{emb.num_layers}",
                      steps=steps, loss=m["learner/value_loss"])
        (rows if steps == last else curves).append(row)
    # generative: fewer training problems, at --curve-steps
    n_curve = [int(x) for x in args.n_curve.split(",") if x]
    for n in n_curve:
        keep = {p.id for p in train_p[:n]}
        gen.init_value_from_policy()
        gen.verified = {}
        gen.add_verified(verified([s for s in train_s if s.problem_id in keep]))
        m = gen.train_verifier("value", steps=args.curve_steps)
        curves.append(measure("generative", lambda t: gen.critic_scores("value", t), labels="outcome (verified samples)",
                              n_train=n, verified=len(gen.verified), size=f"{emb.hidden_size}x{emb.num_layers}",
                              steps=args.curve_steps, loss=m["learner/value_loss"]))

    # head critics, as the loop trains them with learner.critic_model: head
    head = Learner(LearnerConfig(**lcfg, critic_model="head", critics=["q", "prm", "orm"]),
                   str(policy_dir), str(policy_dir), seed=args.seed)
    tr_prefix = prefix_labels(train_s, task)
    pick = np.random.default_rng(args.seed).permutation(len(tr_prefix["text"]))[:args.max_prefix_texts]
    ptexts = [tr_prefix["text"][i] for i in pick]
    complete = [s.prompt + s.solution for s in train_s]
    jobs = [("orm", "outcome (reward of the sample)", complete, [s.reward for s in train_s]),
            ("value", "Monte Carlo mean reward through the prefix", ptexts, [tr_prefix["mc"][i] for i in pick]),
            ("prm", "step check of the prefix", ptexts, [tr_prefix["step"][i] for i in pick]),
            ("q", "best reward through the prefix (rollout)", ptexts, [tr_prefix["best"][i] for i in pick])]
    for name, labels, texts, targets in jobs:
        m = head.train_critic(name, texts, np.array(targets), epochs=args.head_epochs)
        rows.append(measure(f"head {name}", lambda t: head.critic_scores(name, t), labels=labels,
                            n_train=len(train_p), examples=len(texts), size=f"{emb.hidden_size}x{emb.num_layers}",
                            steps=m[f"learner/{name}_steps"], loss=m[f"learner/{name}_loss"]))
    for n in n_curve:
        keep = {p.id for p in train_p[:n]}
        sub = [s for s in train_s if s.problem_id in keep]
        h = Learner(LearnerConfig(**lcfg, critic_model="head"), str(policy_dir), str(policy_dir), seed=args.seed)
        m = h.train_critic("value", [s.prompt + s.solution for s in sub], np.array([s.reward for s in sub]),
                           epochs=args.head_epochs)
        curves.append(measure("head orm", lambda t: h.critic_scores("value", t), labels="outcome (reward of the sample)",
                              n_train=n, examples=len(sub), size=f"{emb.hidden_size}x{emb.num_layers}",
                              steps=m["learner/value_steps"], loss=m["learner/value_loss"]))

    # critic size: a fresh, bigger model in both roles (it has not seen the bootstrap data)
    if args.big_size:
        hid, layers = (int(x) for x in args.big_size.split(","))
        big = build_embedded_model(EmbeddedModelConfig(hidden_size=hid, num_layers=layers, num_heads=4,
                                                       intermediate_size=3 * hid), work / "big", seed=args.seed)
        hb = Learner(LearnerConfig(**lcfg, critic_model="head"), str(policy_dir), str(big), seed=args.seed)
        m = hb.train_critic("value", complete, np.array([s.reward for s in train_s]), epochs=args.head_epochs)
        curves.append(measure("head orm", lambda t: hb.critic_scores("value", t), labels="outcome (reward of the sample)",
                              n_train=len(train_p), examples=len(complete), size=f"{hid}x{layers} fresh",
                              steps=m["learner/value_steps"], loss=m["learner/value_loss"]))
        gb = Learner(LearnerConfig(**lcfg, critic_model="generative"), str(policy_dir), str(big), seed=args.seed)
        gb.add_verified(verified(train_s))
        m = gb.train_verifier("value", steps=args.curve_steps)
        curves.append(measure("generative", lambda t: gb.critic_scores("value", t), labels="outcome (verified samples)",
                              n_train=len(train_p), verified=len(gb.verified), size=f"{hid}x{layers} fresh",
                              steps=args.curve_steps, loss=m["learner/value_loss"]))

    size = f"{emb.hidden_size}x{emb.num_layers}"
    bl = baselines(eval_s, task, eval_p)
    rows = [finalize({**r, "main": True}, bl, args.samples, size) for r in rows]
    curves = [finalize(r, bl, args.samples, size) for r in curves]
    out = {**prov, "bench": "critic_quality", "config": args.config, "args": vars(args),
           "task": cfg.task.name, "train_problems": len(train_p), "eval_problems": len(eval_p),
           "samples_per_problem": args.samples, "temperature": cfg.search.temperature,
           "disjoint_checked": True, "baselines": bl, "policy_size": size,
           "train_sample_acc": float(np.mean([s.reward for s in train_s])),
           "sample_seconds": sample_seconds, "seconds": time.perf_counter() - t_start,
           "rows": rows, "curves": curves}
    dest = Path(args.out_dir)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "critic_quality.json").write_text(json.dumps(out, indent=1))
    (dest / "critic_quality.md").write_text(table(out))
    print(table(out))


def table(out: dict) -> str:
    b = out["baselines"]
    n = out["samples_per_problem"]
    header = [f"| critic | model | labels | size | train problems | steps | AUC within problem | problems | pooled AUC | "
              f"ECE | best-of-{n} | step AUC within |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines = [f"# Critic quality: ranking the policy's own samples on held-out problems ({out['task']})", "",
             f"Commit `{out['commit']}`, {out['machine']}; torch {out['versions']['torch']}, transformers "
             f"{out['versions']['transformers']}. Written by `python bench/critic_quality.py` "
             f"({out['seconds'] / 60:.0f} min, one run).", *([out["note"]] if out.get("note") else []), "",
             f"{out['train_problems']} training and {out['eval_problems']} held-out problems (the task's eval split; "
             f"no question shared, checked in the bench), {n} samples each at temperature {out['temperature']} from the "
             f"policy bootstrapped by the shipped recipe. Every critic learns from the training samples only.", "",
             f"Baselines on the held-out samples: pass@{n} **{b['pass_at_n']:.3f}**, sc@{n} (majority answer) "
             f"**{b['sc_acc']:.3f}**, a random pick **{b['random_acc']:.3f}**.", "",
             *header]

    def row(r):
        name = r["critic"].upper() + (" (the loop's)" if r["recipe"] else "")
        return (f"| {name} | {r['model']} | {r['labels']} | {r['critic_size']} | {r['n_train']} | {r['steps']} | "
                f"**{r['auc_within']:.3f}** | {r['auc_within_problems']} | {r['auc_pooled']:.3f} | {r['ece']:.3f} | "
                f"{r[f'bo{n}_acc']:.3f} | {r.get('step_auc_within', float('nan')):.3f} |")
    lines += [row(r) for r in out["rows"]]
    lines += ["", "Learning curves (training problems, SFT steps, critic size):", "",
              *header] + [row(r) for r in out["curves"]]
    lines += ["", "Labels: outcome = the verifier reward of complete samples (the generative critics learn the reward-1 "
              "ones); monte_carlo = mean reward of the samples through a prefix; best_rollout = their best reward; "
              "step_check = the task's step check (gold-based, training only). All but step_check are outcome-only.",
              "", "AUC within problem: the mean over held-out problems with right and wrong samples of the AUC of "
              "the critic's scores of complete solutions against the verifier; step AUC within: the same over step "
              "prefixes against the task's step check. ECE of the raw scores (the generative score is a "
              "probability of the least likely token, not calibrated). best-of-N: the accuracy of the top-scored "
              "sample per problem.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
