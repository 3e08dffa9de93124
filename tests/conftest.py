import os
import sys
from pathlib import Path

import pytest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every Ray process binds to 127.0.0.1
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rl.config import ArithmeticConfig, EmbeddedModelConfig  # noqa: E402

TINY = EmbeddedModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=256)
EASY = ArithmeticConfig(min_operands=2, max_operands=3, max_value=9, operators="+-", max_result=99)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random-weight Llama with the char tokenizer, saved with save_pretrained."""
    from rl.models.embedded import build_embedded_model
    return build_embedded_model(TINY, tmp_path_factory.mktemp("tiny") / "policy", seed=0)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray per test module (some modules start Ray with their own resources, e.g. fake GPUs)."""
    import ray
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
