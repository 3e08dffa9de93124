"""The engine's KV cache: one preallocated buffer of slots, and the per-slot state the forward and sampler read.

The buffer is [L, 2, S, Hkv, T, D] with S = max_batch_size slots. A sequence owns one slot and its token
at position p sits at column p, so positions are plain indices and nothing is padded on the left. Active
sequences occupy slots 0..n-1 (a finished sequence's slot is refilled from the end: scheduler.py), so
decoding reads views of the buffer, not copies.
"""
from __future__ import annotations

import torch

from rl.models.engine.requests import _Seq


class Slots:
    """Slot KV buffer and slot state; active sequences are in slots 0..n-1.

    What the forward and the sampler read lives in two packed tensors (one copy each moves a slot); what
    only the bookkeeping reads (generated tokens, log-prob, stops, caps, uniforms) lives on the _Seq, in
    Python: one small sync per step instead of tensor ops per sequence.
    """

    def __init__(self, model_config, max_batch_size: int, device: torch.device, dtype: torch.dtype):
        text_cfg = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
        self.num_layers = text_cfg.num_hidden_layers
        self.kv_heads = getattr(text_cfg, "num_key_value_heads", None) or text_cfg.num_attention_heads
        self.head_dim = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // text_cfg.num_attention_heads
        self.dtype = dtype
        self.device = device
        self.max_batch_size = S = max_batch_size
        self.kv: torch.Tensor | None = None        # [L, 2, S, Hkv, T, D]
        self.kv_layers: list[torch.Tensor] = []    # [2, S, Hkv, T, D] views, one per layer
        self.rows: list[_Seq] = []                 # the sequence in each active slot
        z = dict(device=device)
        self.ints = torch.zeros(3, S, dtype=torch.long, **z)
        self.lens, self.next, self.top_k = self.ints            # [S] views: tokens whose KV is in the slot (the
        #                                                         position of the next input), next input, top-k
        self.floats = torch.zeros(2, S, **z)
        self.temp, self.top_p = self.floats                     # [S] views
        self.mode: tuple[bool, bool, bool] | None = None        # sample_tokens mode of the rows; None = stale
        self.slot_ids = torch.arange(S, **z)
        self.positions = torch.arange(0, **z)                   # [T] 0..T-1, for visibility masks

    def ensure_capacity(self, t: int) -> None:
        """Grow the KV buffer to at least t positions."""
        if self.kv is None or self.kv.shape[4] < t:
            old = 0 if self.kv is None else self.kv.shape[4]
            cap = max(-(-t // 64) * 64, old + old // 4)   # whole blocks of 64; grow by >= 1/4 to limit copies
            # zeros, not empty: masked positions still enter q @ k (times a -inf mask), and NaN * 0 is NaN
            kv = torch.zeros(self.num_layers, 2, self.max_batch_size, self.kv_heads, cap, self.head_dim,
                             dtype=self.dtype, device=self.device)
            if self.kv is not None:
                kv[:, :, :, :, :self.kv.shape[4]] = self.kv
            self.kv = kv
            self.kv_layers = list(kv)   # [2, S, Hkv, T, D] views, one per layer
            self.positions = torch.arange(cap, device=self.device)
