"""A Llama-family model's weights arranged for the engine's lean forward (forward.py).

q/k/v and gate/up are stacked into one matrix each (fewer, larger matmuls) and RoPE cos/sin kept as tables.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

FAST_PATH_MODELS = ("llama", "mistral", "qwen2", "qwen3")  # decoder layers with q/k/v/o projections and RoPE


@dataclass
class _LayerWeights:
    ln1: torch.Tensor
    eps1: float
    qkv: torch.Tensor                  # [(Hq + 2 Hkv) D, H]: q, k and v projections stacked
    qkv_b: torch.Tensor | None
    qk_norm: torch.Tensor | None       # qwen3 per-head norms: [Hq + Hkv, D], q's weight per q head, k's per k head
    qk_eps: float
    scaling: float
    o_t: torch.Tensor                  # [Hq D, H]: o projection, transposed for addmm (a view)
    o_b: torch.Tensor | None
    ln2: torch.Tensor
    eps2: float
    gate_up: torch.Tensor              # [2I, H]: gate and up projections stacked
    gate_up_b: torch.Tensor | None
    down_t: torch.Tensor               # [I, H], transposed like o_t
    down_b: torch.Tensor | None
    act: Callable[[torch.Tensor], torch.Tensor]


def _bias(linear) -> torch.Tensor | None:
    return None if linear.bias is None else linear.bias.detach()


def _cat_bias(*linears) -> torch.Tensor | None:
    if all(m.bias is None for m in linears):
        return None
    return torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.out_features) for m in linears])


class FastWeights:
    """A Llama-family model's weights arranged for the lean forward: q/k/v and gate/up stacked into one
    matrix each (fewer, larger matmuls), RoPE cos/sin as tables. Stacked copies go stale when a
    parameter changes, so `refresh` compares parameter versions and rebuilds."""

    STATIC_ROPE = ("default", "linear", "llama3", "yarn")   # frequencies that do not depend on the length

    def __init__(self, model):
        self.model = model
        self.params = list(model.parameters())   # in-place updates (load_weights, optimizers) bump _version
        self.stamp = None
        self.refresh()

    @staticmethod
    def supports(model) -> bool:
        mm = getattr(model, "model", None)
        if model.config.model_type not in FAST_PATH_MODELS or mm is None or not hasattr(model, "lm_head"):
            return False
        norms = [mm.norm] + [n for layer in mm.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
        return all(hasattr(n, "variance_epsilon") for n in norms) and all(
            hasattr(layer.mlp, "gate_proj") and hasattr(layer.self_attn, "q_proj") for layer in mm.layers)

    def refresh(self) -> None:
        stamp = [p._version for p in self.params]
        if stamp == self.stamp:
            return
        self.stamp = stamp
        mm = self.model.model
        cfg = self.model.config
        act = F.silu if cfg.hidden_act == "silu" else mm.layers[0].mlp.act_fn
        self.embed = mm.embed_tokens.weight.detach()
        self.head = self.model.lm_head.weight.detach()
        self.head_b = _bias(self.model.lm_head)
        self.final_norm, self.final_eps = mm.norm.weight.detach(), mm.norm.variance_epsilon
        self.norm_shape = (self.embed.shape[1],)
        self.q_heads = cfg.num_attention_heads
        self.layers = []
        hq = self.q_heads
        hkv = getattr(cfg, "num_key_value_heads", None) or hq
        with torch.no_grad():
            for layer in mm.layers:
                a, m = layer.self_attn, layer.mlp
                qk_norm = hasattr(a, "q_norm")
                self.layers.append(_LayerWeights(
                    ln1=layer.input_layernorm.weight.detach(), eps1=layer.input_layernorm.variance_epsilon,
                    qkv=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                    qkv_b=_cat_bias(a.q_proj, a.k_proj, a.v_proj),
                    qk_norm=torch.cat([a.q_norm.weight.expand(hq, -1), a.k_norm.weight.expand(hkv, -1)])
                    if qk_norm else None,
                    qk_eps=a.q_norm.variance_epsilon if qk_norm else 0.0,
                    scaling=a.scaling,
                    o_t=a.o_proj.weight.detach().t(), o_b=_bias(a.o_proj),
                    ln2=layer.post_attention_layernorm.weight.detach(),
                    eps2=layer.post_attention_layernorm.variance_epsilon,
                    gate_up=torch.cat([m.gate_proj.weight, m.up_proj.weight]),
                    gate_up_b=_cat_bias(m.gate_proj, m.up_proj),
                    down_t=m.down_proj.weight.detach().t(), down_b=_bias(m.down_proj),
                    act=act))
        self.rotary = mm.rotary_emb
        self.cos = self.sin = None

    def rope(self, pos: torch.Tensor, need: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin [..., 1, D] for positions [...] (all < need), from tables when the RoPE kind allows.

        The sin's first half is negated: x cos + swap_halves(x) sin is then HF's x cos + rotate_half(x) sin.
        """
        if getattr(self.rotary, "rope_type", "default") not in self.STATIC_ROPE:
            cos, sin = self.rotary(self.embed[:1], pos[None])                  # [1, ..., D]
            return cos[0].unsqueeze(-2), _sign_halves(sin[0]).unsqueeze(-2)
        if self.cos is None or self.cos.shape[0] < need:
            n = max(need, 2 * (0 if self.cos is None else self.cos.shape[0]), 256)
            cos, sin = self.rotary(self.embed[:1], torch.arange(n, device=pos.device)[None])   # [1, n, D]
            self.cos, self.sin = cos[0], _sign_halves(sin[0])
        return self.cos[pos].unsqueeze(-2), self.sin[pos].unsqueeze(-2)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[P, H] last hidden states -> [P, V] logits."""
        return F.linear(F.rms_norm(hidden, self.norm_shape, self.final_norm, self.final_eps), self.head, self.head_b)


def _sign_halves(sin: torch.Tensor) -> torch.Tensor:
    """[..., D] -> the same with its first half negated (the sign of rotate_half)."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
