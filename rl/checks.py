"""Checks of a run's inputs made before any work (before Ray starts and before run_dir is created):
the model folders, their tokenizer against the model, and the data files against the model's context.
Each failure is one ConfigError or ValueError naming the config key or the file:line at fault."""
from __future__ import annotations

from pathlib import Path

from rl.config import Config, ConfigError
from rl.tasks import load_problems
from rl.tasks.base import Task


def check_model_folder(path: str | Path, key: str):
    """The tokenizer of a HF model folder and its context length (max_position_embeddings, None if unset).

    Raises:
        ConfigError: naming key, when the folder is missing, holds no config.json, or its tokenizer has more
        tokens than the model's embedding (vocab_size): ids past it would index out of range mid-run.
    """
    from transformers import AutoConfig, AutoTokenizer
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"{key} = {str(path)!r}: no such model folder")
    if not (p / "config.json").is_file():
        raise ConfigError(f"{key} = {str(path)!r}: no config.json in the folder (not a HF model folder)")
    try:
        config = AutoConfig.from_pretrained(str(p))
        tok = AutoTokenizer.from_pretrained(str(p))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{key} = {str(path)!r}: cannot load the model config or tokenizer ({e})") from None
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and len(tok) > vocab:
        raise ConfigError(f"{key} = {str(path)!r}: the tokenizer has {len(tok)} tokens but the model's vocab_size "
                          f"is {vocab} (config.json): tokenizer and model do not match")
    return tok, getattr(config, "max_position_embeddings", None)


def check_inputs(cfg: Config, task: Task, policy_dir: str | Path | None = None) -> None:
    """Model folders and data files of a run, before any work.

    policy_dir: the policy folder that will be loaded (a checkpoint's on resume); None = cfg.model.policy.
    """
    policy = str(policy_dir) if policy_dir is not None else cfg.model.policy
    if policy == "embedded":
        from rl.models.tokenizer import build_char_tokenizer
        tok, context = build_char_tokenizer(), cfg.model.embedded.max_positions
    else:
        tok, context = check_model_folder(policy, "model.policy")
    if cfg.model.value and policy_dir is None:
        check_model_folder(cfg.model.value, "model.value")
    if cfg.model.rollout_policy not in (None, "embedded") and policy_dir is None:
        rollout_tok, _ = check_model_folder(cfg.model.rollout_policy, "model.rollout_policy")
        if rollout_tok.get_vocab() != tok.get_vocab():  # its ids would be read with the policy's tokenizer
            raise ConfigError(f"model.rollout_policy = {cfg.model.rollout_policy!r}: its tokenizer differs from "
                              f"the policy's (the fast-rollout policy must share the policy's vocabulary)")

    def prompt_tokens(p) -> int:
        return len(tok(task.prompt(p), add_special_tokens=False)["input_ids"])

    for key in ("train_data", "eval_data"):
        path = getattr(cfg.task, key)
        if path:
            if not Path(path).is_file():
                raise ConfigError(f"task.{key} = {path!r}: no such data file")
            load_problems(path, prompt_tokens=prompt_tokens, context=context)
