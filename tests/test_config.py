import pytest

from rl.config import ConfigError, load_config

REPO_CONFIG = "configs/arithmetic.yaml"


def test_repo_config_loads_with_overrides():
    cfg = load_config(REPO_CONFIG, ["search.simulations=32", "learner.policy_lr=1e-4", "task.eval_data=x.jsonl"])
    assert cfg.search.simulations == 32 and cfg.learner.policy_lr == 1e-4 and cfg.task.eval_data == "x.jsonl"
    assert cfg.run_dir == "runs/arithmetic"


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("run_dir: r\nsearch:\n  simulatons: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml.*'search.simulatons'"):
        load_config(f)


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"override 'search.simulations=many'.*'search.simulations'.*int"):
        load_config(REPO_CONFIG, ["search.simulations=many"])
    with pytest.raises(ConfigError, match=r"'search.method'.*one of"):
        load_config(REPO_CONFIG, ["search.method=dfs"])


def test_unknown_override_key():
    with pytest.raises(ConfigError, match=r"unknown key 'loop.roundz'"):
        load_config(REPO_CONFIG, ["loop.roundz=3"])


def test_missing_required_value(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: missing required key 'run_dir'"):
        load_config(f)
    assert load_config(f, ["run_dir=somewhere"]).run_dir == "somewhere"   # an override may supply it


def test_cli_reports_config_errors_before_work(tmp_path, capsys):
    from launch.cli import main
    assert main(["train", REPO_CONFIG, f"run_dir={tmp_path / 'r'}", "search.c_uct=abc"]) == 2
    assert "search.c_uct" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()                                     # nothing was started or written


def test_search_method_choices_match_the_registry():
    import typing

    from rl.config import SearchConfig
    from rl.search import SEARCHES
    assert set(typing.get_args(typing.get_type_hints(SearchConfig)["method"])) == set(SEARCHES)


def test_samples_batch_reaches_the_sampling_methods_and_is_checked():
    from rl.search import build_search
    cfg = load_config(REPO_CONFIG, ["search.samples_batch=1", "search.samples=5"])
    for method in ("sc", "wvote", "bon"):
        search = build_search(method, cfg.search)
        assert (search.batch_size, search.n) == (1, 5)
    with pytest.raises(ConfigError, match=r"search.samples_batch = 0"):
        load_config(REPO_CONFIG, ["search.samples_batch=0"])


@pytest.mark.parametrize("override, message", [
    ("search.c_min_root=7", r"search.c_min_root = 7: need 1 <= c_min_root <= c_max_root \(read by mcts\)"),
    ("search.merge_threshold=2", r"search.merge_threshold = 2.0: .*\[0, 1\]"),
    ("search.beta_value=0", r"search.beta_value = 0.0: .*all 0"),
    ("search.astar_top_k=0", r"search.astar_top_k = 0: must be >= 1 \(read by astar\)"),   # renamed field
    ("search.astar_lam=-1", r"search.astar_lam = -1.0"),
    ("search.beam_expand=0", r"search.beam_expand = 0: must be >= 1 \(read by beam\)"),
    ("search.samples=0", r"search.samples = 0: need at least one sample"),
    ("search.step_max_tokens=0", r"search.step_max_tokens"),
])
def test_every_search_knob_is_checked_at_load_under_its_config_key(override, message):
    """SearchConfig builds every method, so a value no method accepts stops the load, named as the config key."""
    with pytest.raises(ConfigError, match=message):
        load_config(REPO_CONFIG, [override])


def test_generative_critic_is_the_shipped_default_and_bad_sft_count_is_named():
    cfg = load_config(REPO_CONFIG)
    assert cfg.learner.critic_model == "generative" and cfg.labels.sft_per_prompt == 4
    assert cfg.search.resample == 1 and cfg.search.resample_temperature > cfg.search.temperature
    with pytest.raises(ConfigError, match=r"search.resample = -1"):
        load_config(REPO_CONFIG, ["search.resample=-1"])
    assert cfg.search.stop_solved == 2 and cfg.search.widen == 1
    with pytest.raises(ConfigError, match=r"search.stop_solved = -1"):
        load_config(REPO_CONFIG, ["search.stop_solved=-1"])
    with pytest.raises(ConfigError, match=r"labels.sft_per_prompt = 0"):
        load_config(REPO_CONFIG, ["labels.sft_per_prompt=0"])
    with pytest.raises(ConfigError, match=r"'learner.critic_model'.*one of"):
        load_config(REPO_CONFIG, ["learner.critic_model=big"])
