"""Async mode: the rollout actors search the next round while the learner trains; experience made
with weights older than loop.max_staleness versions is dropped and counted."""
import pytest

from tests.test_integration import ROOT, TINY

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_async_rounds_overlap_search_and_training_and_drop_stale_experience(tmp_path, ray_local):
    from launch.controller import Controller
    from rl.config import load_config
    cfg = load_config(ROOT / "configs" / "arithmetic.yaml", [
        f"run_dir={tmp_path / 'run'}", "loop.rounds=2", *TINY, "loop.mode=async", "loop.max_staleness=0",
        "wandb.mode=disabled", "loop.log_trees=0",
        "learner.policy_epochs=100"])  # training outlasts a search chunk: round 2's chunks start before the push
    ctl = Controller(cfg, resume="none", console=False)
    rows = ctl.run()
    assert [r["round"] for r in rows] == [0, 1, 2] and ctl.version == 3
    m = ctl.last_metrics
    # round 2's prompts were handed out while round 1 trained, so they ran on version 1 weights, one
    # behind the learner's 2 when round 2 trains: with max_staleness 0 the learner drops them, and its
    # count agrees with the versions the actors reported for their chunks
    assert m["async/max_staleness"] == 1 and m["async/dropped_nodes"] > 0
    assert m["async/dropped_nodes"] == m["rollout/stale_nodes"]
    assert "time/learner_idle" in m
    # each round's records are drained (and waited on) before the next round's search is handed out, so the
    # learner never trains round r+1's records in round r
    assert ctl.order == [("drain", 1), ("search", 2), ("drain", 2)]
    # every generated token of a search round is counted: the searches' and the critic labels' (greedy V labels)
    assert m["tokens/generated"] == m["rollout/search_tokens"] + m["rollout/label_tokens"]
    assert m["rollout/search_tokens"] > 0 and m["rollout/label_tokens"] > 0
    assert rows[2]["tokens_cumulative"] == rows[1]["tokens_generated"] + rows[2]["tokens_generated"]
