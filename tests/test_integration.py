"""One short run of the real CLI through Ray and DeepSpeed, then eval, resume and W&B read-back."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.embedded.hidden_size=32", "model.embedded.num_layers=2", "model.embedded.num_heads=2",
        "model.embedded.intermediate_size=64", "bootstrap.steps=5", "bootstrap.examples=64",
        "loop.prompts_per_round=4", "loop.eval_size=8", "loop.eval_search_size=2",
        "search.simulations=3", "search.branching=2", "search.step_max_tokens=8",
        "rollout.num_actors=2", "rollout.num_cpus=0.5", "rollout.chunk_size=2", "learner.num_cpus=1.0",
        "learner.batch_size=4", "wandb.mode=offline"]
# the main run also uses ηMCTS's fast rollouts from a smaller policy (AlphaLLM §4.3), bootstrapped and trained
FAST_ROLLOUTS = ["model.rollout_policy=embedded", "search.rollouts=1", "search.beta_orm=0.5"]


def arbor(*args, cwd=ROOT):
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", WANDB_MODE="offline")
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "r"
    out = arbor("train", "configs/arithmetic.yaml", f"run_dir={run}", "loop.rounds=1", *TINY, *FAST_ROLLOUTS)
    assert out.returncode == 0, out.stderr[-3000:]
    return run


def test_one_round_writes_summary_checkpoints_and_versions(run_dir):
    rows = json.loads((run_dir / "summary.json").read_text())
    assert [r["round"] for r in rows] == [0, 1]
    for r in rows:
        assert 0.0 <= r["greedy_acc"] <= 1.0 and 0.0 <= r["search_acc"] <= 1.0 and r["seconds"] > 0
        assert 0.0 <= r["value_ece"] <= 1.0
    assert [r["policy_version"] for r in rows] == [1, 2]          # one publish per round
    from rl.search.stats import DIVERSITY_KEYS
    searched = rows[1]                                           # round 0 bootstraps: no search, no diversity
    keys = {f"search_{k}" for k in DIVERSITY_KEYS}
    assert not keys & set(rows[0]) and keys <= set(searched)
    assert searched["search_distinct_children"] >= 1.0 and 0.0 <= searched["search_pass_any"] <= 1.0
    assert searched["search_unique_answers"] >= searched["search_pass_any"]   # a right answer is an answer
    assert ("heldout_value_ece" in searched) == ("auc_within_value" in searched)  # both from the held-out report
    for rnd in (0, 1):
        ck = run_dir / "checkpoints" / f"round_{rnd:04d}"
        assert (ck / "policy" / "model.safetensors").is_file() and (ck / "policy" / "tokenizer.json").is_file()
        assert (ck / "value" / "model.safetensors").is_file()
        assert (ck / "deepspeed" / "policy").is_dir() and (ck / "deepspeed" / "value").is_dir()
        state = json.loads((ck / "loop_state.json").read_text())
        assert state["round"] == rnd and state["version"] == rnd + 1
        assert (ck / "replay.jsonl").is_file()
    from rl.experience import ReplayBuffer
    replay = ReplayBuffer.load(run_dir / "checkpoints" / "round_0001" / "replay.jsonl")
    assert len(replay) > 0 and {r.policy_version for r in replay} == {1}   # searched with the bootstrap weights
    # the fast-rollout policy: its own (smaller) model in every checkpoint, trained with the policy
    for rnd in (0, 1):
        conf = json.loads((run_dir / "checkpoints" / f"round_{rnd:04d}" / "rollout_policy" / "config.json").read_text())
        assert conf["num_hidden_layers"] == 1 and conf["hidden_size"] == 32
    pages = list((run_dir / "trees" / "round_0001").glob("*.html"))
    assert pages and "<details" in pages[0].read_text()            # search trees to look at


def test_wandb_offline_run_holds_the_round_metrics(run_dir):
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    out = subprocess.run(["wandb", "leet", "inspect", str(runs[0])], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for key in ("eval/greedy_acc", "eval/search_acc", "learner/value_loss", "rollout/solved_frac", "search/tree_0",
                "search/distinct_children", "search/merged_samples", "search/unique_answers", "search/pass_any",
                "perf/host_rss_mb", "perf/tokens_per_s", "perf/simulations_per_s", "search/simulations",
                "search/depth", "bootstrap/rollout_policy_loss"):  # the small policy bootstrapped
        assert key in out.stdout


def test_eval_cli_on_fresh_data(run_dir, tmp_path):
    data = tmp_path / "eval.jsonl"
    assert arbor("data", "generate", "--task", "arithmetic", "--n", "6", "--seed", "99", "--out", str(data),
                 "--config", "configs/arithmetic.yaml").returncode == 0
    for method in ("greedy", "sc", "wvote", "bon", "beam", "mcts", "astar"):
        res = tmp_path / f"{method}.json"
        out = arbor("eval", "--checkpoint", str(run_dir), "--data", str(data), "--method", method,
                    "--out", str(res), "search.simulations=2", "search.samples=2", "search.astar_top_k=2",
                    "search.astar_max_expansions=3", "search.beam_width=2", "search.beam_expand=2")
        assert out.returncode == 0, out.stderr[-2000:]
        r = json.loads(res.read_text())
        assert r["n"] == 6 and 0.0 <= r["accuracy"] <= 1.0 and "round_0001" in r["checkpoint"]
        assert r["accuracy"] == sum(x["correct"] for x in r["records"]) / 6
        assert all(set(x) >= {"id", "prediction", "gold", "correct", "tokens"} for x in r["records"])
    # the task's rule-based utility in place of a trained critic, chosen by overrides alone
    for method, rule in (("bon", "search.rule_critics=[orm]"), ("astar", "search.astar_g_source=rule")):
        res = tmp_path / f"{method}-rule.json"
        out = arbor("eval", "--checkpoint", str(run_dir), "--data", str(data), "--method", method, "--out", str(res),
                    rule, "search.samples=2", "search.astar_top_k=2", "search.astar_max_expansions=3")
        assert out.returncode == 0, out.stderr[-2000:]
        assert json.loads(res.read_text())["n"] == 6
    bad = arbor("eval", "--checkpoint", str(run_dir), "--data", str(data), "--method", "dfs")
    assert bad.returncode == 2 and "dfs" in bad.stderr


def test_resume_continues_from_the_newest_checkpoint(run_dir, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(run_dir, run)
    refused = arbor("train", "configs/arithmetic.yaml", f"run_dir={run}", "loop.rounds=2", "--resume", "none", *TINY,
                    *FAST_ROLLOUTS)
    assert refused.returncode == 2 and "already holds checkpoints" in refused.stderr
    out = arbor("train", "configs/arithmetic.yaml", f"run_dir={run}", "loop.rounds=2", *TINY, *FAST_ROLLOUTS)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((run / "summary.json").read_text())
    assert [r["round"] for r in rows] == [0, 1, 2]
    from rl.experience import ReplayBuffer
    before = ReplayBuffer.load(run / "checkpoints" / "round_0001" / "replay.jsonl")
    after = ReplayBuffer.load(run / "checkpoints" / "round_0002" / "replay.jsonl")
    assert {r.id for r in before} <= {r.id for r in after}                # the buffer carried over the resume
    assert rows[2]["policy_version"] == 3                        # versions continue, not restart
    assert (run / "checkpoints" / "round_0002" / "rollout_policy" / "model.safetensors").is_file()


def test_gsm8k_run_with_rewriting_logs_the_imagination_counts(tmp_path):
    """configs/gsm8k.yaml with tests/data's GSM8K files (the test split, the train split's first 300), one tiny round: the policy (the
    real tiny model, no bootstrap) rewrites 2 prompts with 3 templates, and the counts reach summary.json and W&B."""
    run = tmp_path / "g"
    out = arbor("train", "configs/gsm8k.yaml", f"run_dir={run}", "loop.rounds=1", *TINY, "bootstrap.steps=0",
                "search.max_depth=4", "imagination.seeds_per_round=2", "imagination.samples=2",
                "imagination.question_max_tokens=16", "task.gsm8k.train_path=tests/data/gsm8k_train_head300.jsonl",
                "task.gsm8k.eval_path=tests/data/gsm8k_test.jsonl")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((run / "summary.json").read_text())
    assert [r["round"] for r in rows] == [0, 1]
    assert not any(k.startswith("imagination_") for k in rows[0])     # round 0 bootstraps, nothing rewritten
    counts = {k: v for k, v in rows[1].items() if k.startswith("imagination_")}
    assert counts["imagination_proposed"] == 2 * 3
    assert counts["imagination_proposed"] == sum(counts[f"imagination_{k}"] for k in (
        "kept", "dropped_invalid", "dropped_overlap", "dropped_disagree"))
    [wb] = list((run / "wandb").glob("offline-run-*"))
    logged = subprocess.run(["wandb", "leet", "inspect", str(wb)], capture_output=True, text=True, timeout=120)
    assert logged.returncode == 0, logged.stderr
    for key in ("imagination/proposed", "imagination/kept", "imagination/dropped_overlap",
                "imagination/dropped_disagree", "time/imagination"):
        assert key in logged.stdout
