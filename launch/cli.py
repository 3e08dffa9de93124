"""The `arbor` command line: train, eval, grade, data generate."""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="arbor", description="arbor-rl: learn to reason by searching over reasoning steps")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="bootstrap, then rounds of search, learning and evaluation")
    t.add_argument("config", help="YAML config file")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. search.simulations=32")
    t.add_argument("--resume", default="auto", help="auto (newest checkpoint of run_dir, if any), none, or a checkpoint path")
    t.add_argument("--address", default=None, help="join a Ray cluster (auto or HOST:PORT) instead of starting one")

    e = sub.add_parser("eval", help="accuracy of a checkpoint on a JSONL file of problems")
    e.add_argument("--checkpoint", required=True, help="a checkpoint folder, or a run folder (its newest checkpoint)")
    e.add_argument("--data", required=True, help="JSONL of problems (see `arbor data generate`)")
    e.add_argument("--method", default="greedy", help="greedy, sc, wvote, bon, beam, mcts or astar")
    e.add_argument("--out", default=None, help="write RESULTS.json here")
    e.add_argument("overrides", nargs="*", help="dotted overrides of the checkpoint's config, e.g. search.simulations=32")

    gr = sub.add_parser("grade", help="grade a JSONL file of completions against gold answers (launch/grade.py)")
    gr.add_argument("--task", required=True, choices=["gsm8k", "math", "code"])
    gr.add_argument("--data", required=True, help="JSONL: question (or prompt), gold answer, completion per line")
    gr.add_argument("--out", required=True, help="write RESULTS.json here")
    gr.add_argument("--workers", type=int, default=None,
                    help="code: records graded at once in the sandbox (default: the CPU count)")

    d = sub.add_parser("data", help="data utilities")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    g = dsub.add_parser("generate", help="write generated problems with gold answers as JSONL")
    g.add_argument("--task", default="arithmetic")
    g.add_argument("--n", type=int, required=True)
    g.add_argument("--seed", type=int, required=True)
    g.add_argument("--split", default="eval", choices=["train", "eval"],
                   help="eval problems never appear in training (default: eval)")
    g.add_argument("--out", required=True)
    g.add_argument("--config", default=None, help="take the task knobs from this config's task section")
    g.add_argument("overrides", nargs="*", help="task overrides, e.g. task.arithmetic.max_value=9")
    return p


def cmd_train(args) -> int:
    from launch.controller import Controller
    from rl.config import load_config
    cfg = load_config(args.config, args.overrides)
    Controller(cfg, resume=args.resume, address=args.address).run()
    print(f"summary: {Path(cfg.run_dir) / 'summary.json'}")
    return 0


def cmd_eval(args) -> int:
    import numpy as np

    from launch.checkpoint import load_loop_state, resolve_checkpoint
    from rl.checks import check_model_folder
    from rl.config import from_dict
    from rl.rollout import RolloutWorker
    from rl.search import SEARCHES
    from rl.tasks import build_task, load_problems

    if args.method not in SEARCHES:
        raise ValueError(f"--method {args.method!r}: known methods are {', '.join(SEARCHES)}")
    ck = resolve_checkpoint(args.checkpoint)
    cfg = from_dict(load_loop_state(ck)["config"], args.overrides, where=f"{ck}/loop_state.json")
    task = build_task(cfg.task)
    tok, context = check_model_folder(ck / "policy", f"{ck}/policy")  # tokenizer vs model, before any search
    problems = load_problems(args.data, context=context,
                             prompt_tokens=lambda p: len(tok(task.prompt(p), add_special_tokens=False)["input_ids"]))
    critics = [n for n in cfg.learner.critics if (ck / n).is_dir()]  # the trained critics the checkpoint holds
    worker = RolloutWorker(task, cfg.search, str(ck / "policy"), str(ck / "value"), device=cfg.model.device,
                           seed=cfg.seed, backend=cfg.model.backend, critics=critics,
                           critic_paths={n: str(ck / n) for n in critics})
    records = worker.evaluate(problems, args.method)
    acc = float(np.mean([r.correct for r in records]))
    out = {"checkpoint": str(ck), "data": args.data, "method": args.method, "accuracy": acc, "n": len(records),
           "mean_tokens": float(np.mean([r.tokens for r in records])), "records": [asdict(r) for r in records]}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"{args.method} accuracy {acc:.3f} on {len(records)} problems ({ck})")
    return 0


def cmd_grade(args) -> int:
    from launch.grade import grade_file
    if args.overrides:
        raise ValueError(f"arbor grade takes no overrides: {' '.join(args.overrides)}")
    res = grade_file(args.task, args.data, args.out, workers=args.workers)
    print(f"{args.task} accuracy {res['accuracy']:.3f} on {res['n']} records ({args.out})")
    return 0


def cmd_data(args) -> int:
    from dataclasses import replace

    from rl.config import load_config
    from rl.tasks import TASKS, build_task, save_problems
    if args.task not in TASKS:
        raise ValueError(f"--task {args.task!r}: known tasks are {', '.join(TASKS)}")
    # run_dir is required for training only; data generation writes to --out
    cfg = load_config(args.config, [*args.overrides, "run_dir=unused"])
    problems = build_task(replace(cfg.task, name=args.task)).generate(args.n, args.seed, args.split)
    save_problems(problems, args.out)
    print(f"wrote {len(problems)} {args.split} problems to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from rl.config import ConfigError
    parser = _parser()
    # overrides may come after options too: collect leftover key=value words into overrides
    args, extra = parser.parse_known_args(argv)
    bad = [w for w in extra if w.startswith("-") or "=" not in w]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = [*getattr(args, "overrides", []), *extra]
    try:
        if args.cmd == "train":
            return cmd_train(args)
        if args.cmd == "eval":
            return cmd_eval(args)
        if args.cmd == "grade":
            return cmd_grade(args)
        return cmd_data(args)
    except (ConfigError, ValueError, ConnectionError) as e:
        print(f"arbor: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
