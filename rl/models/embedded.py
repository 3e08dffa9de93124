"""The embedded default model: a tiny random-weight Llama with a character tokenizer.

It is saved with save_pretrained (safetensors) and always loaded back with
from_pretrained, so a real HF checkpoint folder can replace it in the config.
Llama rather than Qwen2: AutoTokenizer on a qwen2 folder rebuilds a byte-level
tokenizer and drops the spaces and newlines of a character vocabulary.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rl.config import EmbeddedModelConfig
from rl.models.tokenizer import save_char_tokenizer


def build_embedded_model(cfg: EmbeddedModelConfig, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a fresh tiny Llama and its tokenizer to out_dir; return the folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = save_char_tokenizer(out_dir)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_positions,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(str(out_dir))
    return out_dir
