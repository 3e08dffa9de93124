"""Bad input is refused before any work: one message naming the config key or file:line, exit code 2, and
nothing written to run_dir (the checks run before Ray starts and before run_dir is created)."""
import json
import shutil
import time
from pathlib import Path

import pytest

from launch.cli import main

TINY = ["model.embedded.hidden_size=32", "model.embedded.num_layers=2", "model.embedded.num_heads=2",
        "model.embedded.intermediate_size=64", "loop.eval_size=4", "loop.eval_search_size=2"]


def _config(tmp_path: Path, text: str = "") -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(f"run_dir: {tmp_path / 'run'}\n{text}")
    return p


def _refused(capsys, tmp_path, argv, *patterns) -> str:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("arbor: error:")]
    assert len(lines) == 1, err  # one clear message
    for pat in patterns:
        assert pat in lines[0], lines[0]
    assert not (tmp_path / "run").exists()  # nothing written to run_dir
    return lines[0]


@pytest.mark.parametrize("text, override, named", [
    ("loop:\n  roundz: 3\n", None, "unknown key 'loop.roundz'"),
    ("loop:\n  rounds: three\n", None, "'loop.rounds' = 'three' is not int"),
    ("", "search.simulations=-1", "search.simulations = -1"),
    ("", "search.astar_lam=abc", "'search.astar_lam' = 'abc' is not float"),
    ("", "search.temperature=0", "search.temperature = 0.0: must be > 0"),
    ("", "search.temperature=-0.5", "search.temperature = -0.5"),
    ("", "loop.rounds=0", "loop.rounds = 0: must be >= 1"),
    ("", "model.policy=/nonexistent/model", "model.policy = '/nonexistent/model': no such model folder"),
    ("", "model.value=/nonexistent/critic", "model.value = '/nonexistent/critic': no such model folder"),
    ("", "task.train_data=/nonexistent/train.jsonl", "task.train_data = '/nonexistent/train.jsonl'"),
])
def test_bad_config_values_are_named(tmp_path, capsys, text, override, named):
    _refused(capsys, tmp_path, ["train", _config(tmp_path, text), *TINY, *([override] if override else [])], named)


def test_a_tokenizer_that_does_not_match_its_model_is_refused_at_load(tmp_path, capsys, tiny_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["vocab_size"] = 40  # the char tokenizer has ~100 tokens
    (model / "config.json").write_text(json.dumps(cfg))
    _refused(capsys, tmp_path, ["train", _config(tmp_path), *TINY, f"model.policy={model}"],
             "model.policy", "tokenizer has", "vocab_size is 40")


def test_a_run_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "run").write_text("not a folder")
    rc = main(["train", str(_config(tmp_path)), *TINY])
    err = capsys.readouterr().err
    assert rc == 2 and "run_dir" in err and "is a file" in err and (tmp_path / "run").read_text() == "not a folder"


@pytest.mark.parametrize("content, named", [
    (b"loop: [1, 2\n", "not valid YAML"),
    (b"loop:\n  rounds: 2\n  note: \xff\xfe\n", "not UTF-8"),
])
def test_an_unreadable_yaml(tmp_path, capsys, content, named):
    p = tmp_path / "c.yaml"
    p.write_bytes(content)
    _refused(capsys, tmp_path, ["train", p], str(p), named)
    _refused(capsys, tmp_path, ["train", tmp_path / "missing.yaml"], "config file not found")


GOOD = '{"id": "a", "question": "1 + 2", "answer": "3"}\n'


@pytest.mark.parametrize("content, where", [
    (b"", "holds no problems"),
    (GOOD.encode() + b"{not json\n", "data.jsonl:2: not a JSON line"),
    (GOOD.encode() + b'{"id": "b", "answer": "4"}\n', "data.jsonl:2: missing field 'question'"),
    (GOOD.encode() + b'{"id": "b", "question": ["1 + 3"], "answer": "4"}\n',
     "data.jsonl:2: field 'question' = ['1 + 3'] is not str"),
    (GOOD.encode() + b'{"id": "b", "question": "1 + 3", "answer": null}\n', "data.jsonl:2: field 'answer' = None"),
    (GOOD.encode() * 2, "data.jsonl:2: duplicate problem id 'a'"),
    (GOOD.encode() + b'{"id": "b", "question": "1 \xff 3", "answer": "4"}\n', "data.jsonl:2: not UTF-8"),
    (GOOD.encode() + json.dumps({"id": "long", "question": " + ".join(["1"] * 200), "answer": "200"}).encode(),
     "data.jsonl:2: the prompt of problem 'long' is"),
])
@pytest.mark.parametrize("key", ["train_data", "eval_data"])
def test_bad_data_files_name_file_and_line(tmp_path, capsys, content, where, key):
    data = tmp_path / "data.jsonl"
    data.write_bytes(content)
    # a 256-position model: the 200-operand prompt (~800 characters) does not fit
    _refused(capsys, tmp_path, ["train", _config(tmp_path), *TINY, f"task.{key}={data}"], where)


def test_eval_of_a_folder_without_checkpoints_and_of_an_unknown_method(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(GOOD)
    (tmp_path / "empty").mkdir()
    _refused(capsys, tmp_path, ["eval", "--checkpoint", tmp_path / "empty", "--data", data],
             "empty", "neither a checkpoint folder")
    _refused(capsys, tmp_path, ["eval", "--checkpoint", tmp_path / "empty", "--data", data, "--method", "dfs"],
             "--method 'dfs'", "known methods")


def test_train_with_an_address_where_no_cluster_listens_fails_fast(tmp_path, capsys):
    t0 = time.perf_counter()
    _refused(capsys, tmp_path, ["train", _config(tmp_path), *TINY, "--address", "127.0.0.1:9"],
             "--address 127.0.0.1:9", "no Ray cluster answers")
    assert time.perf_counter() - t0 < 30  # ray.init alone would retry for minutes
