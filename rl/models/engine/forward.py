"""The forward pass of one engine step: a decode token per active slot plus the prefill rows, in one pass.

Each attention uses an explicit visibility mask (the query at position p sees keys 0..p of its own slot)
and explicit positions, so every row computes what a full recompute of that row would. For Llama-family
models (llama, mistral without a sliding window, qwen2, qwen3) a lean forward runs all tokens of a step
as one flat batch ([N, H]: stacked q/k/v and gate/up weights from fast_weights.py, RoPE tables, in-place
RoPE, residual adds fused into the matmuls, one KV write per layer) with attention in two parts (decode
tokens against a view of their slots, prompt tokens regrouped into padded rows); at small sizes it costs
about half the HF forward. `fast_path=False` (and any other architecture) runs the model's own forward
with the slot buffer as `past_key_values`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache

from rl.models.engine.fast_weights import FastWeights
from rl.models.engine.requests import _Prefill
from rl.models.engine.slots import Slots


class Forward:
    """Logits for a step over the slots, by the lean Llama-family forward or the model's own.

    Args:
        model: the causal LM (in eval mode, on the slots' device).
        slots: the KV buffer the forward reads and writes.
        counters: the engine's counters (forward_passes).
        fast_path: use the lean forward when the model supports it.
    """

    def __init__(self, model, slots: Slots, counters: dict[str, int], *, fast_path: bool = True):
        self.model, self.slots, self.counters = model, slots, counters
        self.device, self.dtype = slots.device, slots.dtype
        self.fast = FastWeights(model) if fast_path and FastWeights.supports(model) else None

    def refresh(self) -> None:
        """Rebuild the lean forward's stacked weights if a parameter changed in place since the last call."""
        if self.fast is not None:
            self.fast.refresh()

    def compute(self, n_dec: int, pre: _Prefill | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One decode token for slots 0..n_dec-1 and the prefill rows of pre, in one pass where possible.

        Returns:
            [n_dec, V] next-token logits of the decoding slots, and [P, V] logits at the needed positions
            of the prefill rows (row after row), each None when that part is empty.
        """
        if n_dec == 0 and pre is None:
            return None, None
        self.counters["forward_passes"] += 1
        dev = dict(dtype=torch.long, device=self.device)
        if pre is not None:
            qlens = [len(s.prompt) - m for s, m in zip(pre.rows, pre.lens)]
            q = max(qlens)
            ids = torch.zeros(len(pre.rows), q, dtype=torch.long)
            picks_r, picks_c = [], []
            for r, s in enumerate(pre.rows):
                ids[r, :qlens[r]] = torch.tensor(s.prompt[pre.lens[r]:], dtype=torch.long)
                picks_r += [r] * (qlens[r] - pre.first[r])
                picks_c += list(range(pre.first[r], qlens[r]))
            slots, lens = torch.tensor(pre.slots, **dev), torch.tensor(pre.lens, **dev)
            qlens_t = torch.tensor(qlens, **dev)
            picks = (torch.tensor(picks_r, **dev), torch.tensor(picks_c, **dev))
        if self.fast is None:  # HF forward: the decode part and the prefill part separately
            dec = None
            if n_dec:
                lens_d = self.slots.lens[:n_dec]
                dec = self._hf_forward(self.slots.next[:n_dec, None], slice(0, n_dec), lens_d, torch.ones_like(lens_d),
                                       None)
            return dec, (self._hf_forward(ids.to(self.device), slots, lens, qlens_t, picks) if pre is not None
                         else None)
        return self._lean_forward(n_dec, None if pre is None else (ids.to(self.device), slots, lens, qlens_t, picks))

    def _masks(self, lens: torch.Tensor, qlens: torch.Tensor, q: int):
        """Positions [B, Q], visibility [B, 1, Q, tk] and tk for rows whose tokens start at position lens.

        A query at position p sees keys 0..p; a padded query (past qlens) sees only its row's real keys,
        which keeps its (discarded) output finite.
        """
        dev = self.device
        steps = torch.arange(q, device=dev)
        pos = lens[:, None] + steps                                                  # [B, Q]
        ends = lens + qlens                                                          # [B] cached after this call
        tk = int(ends.max())
        last = torch.minimum(pos, (ends - 1)[:, None])                               # [B, Q]
        visible = (torch.arange(tk, device=dev) <= last[:, :, None])[:, None]        # [B, 1, Q, tk]
        return pos, visible, tk

    def _hf_forward(self, ids: torch.Tensor, slots, lens: torch.Tensor, qlens: torch.Tensor,
                    pick: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """The model's own forward with the slot buffer as its cache (any architecture).

        Args:
            ids: [B, Q] input tokens, right-padded; row b has qlens[b] real tokens.
            slots: slice (contiguous active slots) or [B] long slot indices.
            lens: [B] tokens already cached in each slot; row b's tokens sit at positions lens[b]..
            pick: (rows, cols) of the query positions whose logits are wanted; None = the last of each row.
        Returns:
            [P, V] logits.
        """
        B, Q = ids.shape
        pos, visible, tk = self._masks(lens, qlens, Q)
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=self.device).masked_fill_(~visible, float("-inf"))
        slot_idx = self.slots.slot_ids[slots] if isinstance(slots, slice) else slots # [B]
        keep = torch.arange(Q, device=self.device)[None] < qlens[:, None]            # [B, Q] real tokens
        view = _SlotView(self, slots, slot_idx[:, None].expand(B, Q)[keep], pos[keep], keep, tk)
        out = self.model(input_ids=ids, position_ids=pos, attention_mask=mask, past_key_values=view, use_cache=True)
        return out.logits[pick if pick is not None else (torch.arange(B, device=self.device), qlens - 1)]

    def write_read(self, layer: int, k: torch.Tensor, v: torch.Tensor, slots, rows, cols, keep, tk):
        """Write k, v ([B, Hkv, Q, D]) of real tokens into the slots; return the slots' [B, Hkv, tk, D] K and V."""
        kv = self.slots.kv[layer]                                                     # [2, S, Hkv, T, D]
        kv[0][rows, :, cols] = k.transpose(1, 2)[keep]                                # [N, Hkv, D]
        kv[1][rows, :, cols] = v.transpose(1, 2)[keep]
        return kv[0][slots, :, :tk], kv[1][slots, :, :tk]

    def _lean_forward(self, n_dec: int, pre) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """A Llama-family decoder over a flat batch of tokens: one per decoding slot, then the prefill tokens.

        Norms, projections and MLPs run once over all N tokens ([N, H]); attention runs in two parts:
        the decode tokens against their slots' contiguous KV view, and the prefill tokens, regrouped
        into right-padded rows [P, Q], against their slots' KV (gathered).
        """
        w = self.fast
        dev = self.device
        hq, hkv, d = w.q_heads, self.slots.kv_heads, self.slots.head_dim
        toks, poss, slot_of_tok = [], [], []
        if n_dec:
            lens_d = self.slots.lens[:n_dec]                                                # [n_dec] input positions
            toks.append(self.slots.next[:n_dec])
            poss.append(lens_d)
            slot_of_tok.append(self.slots.slot_ids[:n_dec])
            tk_d = int(lens_d.max()) + 1
            mask_d = (self.slots.positions[:tk_d] <= lens_d[:, None])[:, None, None]        # [n_dec, 1, 1, tk_d] bool
        if pre is not None:
            ids, slots_p, lens_p, qlens_p, (pick_r, pick_c) = pre
            P, Q = ids.shape
            pos_p, vis_p, tk_p = self._masks(lens_p, qlens_p, Q)                      # [P, Q], [P, 1, Q, tk_p]
            mask_p = torch.where(vis_p, 0.0, float("-inf")).to(self.dtype)
            real = torch.arange(Q, device=dev)[None] < qlens_p[:, None]               # [P, Q]
            toks.append(ids[real])
            poss.append(pos_p[real])
            slot_of_tok.append(slots_p[:, None].expand(P, Q)[real])
            # flat index of each padded prefill position (padding points at token 0; its output is dropped)
            flat = torch.zeros(P, Q, dtype=torch.long, device=dev)
            flat[real] = n_dec + torch.arange(int(real.sum()), device=dev)
            picked = flat[pick_r, pick_c]                                              # [picks] flat indices
        tok = torch.cat(toks) if len(toks) > 1 else toks[0]                            # [N]
        pos = torch.cat(poss) if len(poss) > 1 else poss[0]                            # [N]
        slot = torch.cat(slot_of_tok) if len(slot_of_tok) > 1 else slot_of_tok[0]      # [N]
        N = tok.shape[0]
        x = F.embedding(tok, w.embed)                                                  # [N, H]
        top = max(tk_d if n_dec else 0, tk_p + Q if pre is not None else 0)         # > every position
        cos, sin = w.rope(pos, top)                                                    # [N, 1, D], sin signed
        for i, lw in enumerate(w.layers):
            h = F.rms_norm(x, w.norm_shape, lw.ln1, lw.eps1)
            y = F.linear(h, lw.qkv, lw.qkv_b)                                          # [N, (Hq + 2Hkv) D]: q, k, v
            qk = y[:, :(hq + hkv) * d].view(N, hq + hkv, d)                            # q and k heads
            if lw.qk_norm is not None:  # qwen3: RMSNorm over each head of q and k before RoPE
                qk.copy_(F.rms_norm(qk, (d,), eps=lw.qk_eps) * lw.qk_norm)
            # RoPE in place, in 3 ops: rotate_half(x) = [-x2, x1] is [x2, x1] (the halves swapped) times a
            # sign that the sin table carries
            swapped = qk.view(N, hq + hkv, 2, d // 2).flip(2).view(N, hq + hkv, d)   # [N, Hq + Hkv, D]
            qk.mul_(cos).addcmul_(swapped, sin)
            q = y[:, :hq * d].view(N, hq, d)                                           # [N, Hq, D]
            kv = self.slots.kv_layers[i]                                                    # [2, S, Hkv, T, D]
            # one write for k and v (adjacent in y); the indexed dims go first: [N, 2, Hkv, D]
            kv[:, slot, :, pos] = y[:, hq * d:(hq + 2 * hkv) * d].view(N, 2, hkv, d)
            keys, values = kv[0], kv[1]                                                # [S, Hkv, T, D] each
            outs = []
            if n_dec:
                o = F.scaled_dot_product_attention(q[:n_dec, :, None], keys[:n_dec, :, :tk_d], values[:n_dec, :, :tk_d],
                                                   attn_mask=mask_d, scale=lw.scaling, enable_gqa=hq != hkv)
                outs.append(o.view(n_dec, hq * d))                                     # [n_dec, Hq D]
            if pre is not None:
                qp = q[flat].transpose(1, 2)                                           # [P, Hq, Q, D]
                o = F.scaled_dot_product_attention(qp, keys[slots_p, :, :tk_p], values[slots_p, :, :tk_p],
                                                   attn_mask=mask_p, scale=lw.scaling, enable_gqa=hq != hkv)
                outs.append(o.transpose(1, 2)[real].reshape(-1, hq * d))               # [Np, Hq D]
            o = torch.cat(outs) if len(outs) > 1 else outs[0]                          # [N, Hq D]
            x = _add_linear(x, o, lw.o_t, lw.o_b)
            h = F.rms_norm(x, w.norm_shape, lw.ln2, lw.eps2)
            gate, up = F.linear(h, lw.gate_up, lw.gate_up_b).chunk(2, dim=-1)         # [N, I] each
            x = _add_linear(x, lw.act(gate) * up, lw.down_t, lw.down_b)
        if pre is None:
            return w.logits(x), None
        logits = w.logits(torch.cat([x[:n_dec], x[picked]]) if n_dec else x[picked])
        return (logits[:n_dec] if n_dec else None), logits[n_dec:]


class _SlotView(Cache):
    """The slot buffer seen by an HF forward as `past_key_values` (fallback path): update writes, then reads."""

    def __init__(self, forward: Forward, slots, rows: torch.Tensor, cols: torch.Tensor, keep: torch.Tensor, tk: int):
        super().__init__(layers=[])
        self.forward, self.slots, self.rows, self.cols, self.keep, self.tk = forward, slots, rows, cols, keep, tk

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return self.forward.write_read(layer_idx, key_states, value_states, self.slots, self.rows, self.cols,
                                       self.keep, self.tk)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0


def _add_linear(x: torch.Tensor, h: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x + h @ weight_t (+ bias): the residual add fused into the matmul (one addmm) when there is no bias."""
    return torch.addmm(x, h, weight_t) if bias is None else torch.addmm(x + bias, h, weight_t)
