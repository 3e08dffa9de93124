"""Token sampling: inverse-CDF draws from per-sequence uniforms, so a sample does not depend on its batch.

Each sequence draws its uniforms up front from its own torch.Generator, seeded by `sequence_seed` from
(call seed, prefix index, sample index); `sample_tokens` turns one uniform per row into a token.
"""
from __future__ import annotations

import torch


def sample_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor,
                  uniform: torch.Tensor | None, *, mode: tuple[bool, bool, bool] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row by inverse-CDF sampling, and its log-probability.

    Args:
        logits: [B, V] raw next-token logits.
        temperature: [B]; rows at <= 0 are greedy (argmax, log-prob under the raw softmax).
        top_p: [B] nucleus mass (1 = off): keep the most likely tokens until their mass reaches top_p.
        top_k: [B] long, keep the k most likely tokens (0 = off).
        uniform: [B] in [0, 1), one draw per row (unused, may be None, when every row is greedy).
        mode: (any row greedy, every row greedy, any row filtered by top-k/top-p) when the caller knows
            them; otherwise read from the tensors (three device syncs).
    Returns:
        tokens [B] long and log-probs [B] under the (scaled, filtered, renormalised) distribution.
    """
    if mode is None:
        greedy_rows = temperature <= 0
        mode = bool(greedy_rows.any()), bool(greedy_rows.all()), bool(((top_k > 0) | (top_p < 1)).any())
    any_greedy, all_greedy, any_filter = mode
    if all_greedy:
        tokens = logits.argmax(-1)
        return tokens, logits.log_softmax(-1).gather(1, tokens[:, None]).squeeze(1)
    greedy = temperature <= 0 if any_greedy else None                                         # [B]
    scale = torch.where(greedy, torch.ones_like(temperature), temperature) if any_greedy else temperature
    scaled = logits / scale[:, None]                                                          # [B, V]
    if any_filter:
        ranked, order = scaled.sort(-1, descending=True)                                        # [B, V]
        rank = torch.arange(ranked.shape[1], device=logits.device)
        drop = (top_k[:, None] > 0) & (rank[None] >= top_k[:, None])
        probs = ranked.softmax(-1)
        mass_before = probs.cumsum(-1) - probs                                                  # [B, V]
        drop |= (top_p[:, None] < 1) & (mass_before >= top_p[:, None])
        drop[:, 0] = False                                                                      # never drop the argmax
        scaled = torch.full_like(scaled, float("-inf")).scatter(1, order, ranked.masked_fill(drop, float("-inf")))
    logp = scaled.log_softmax(-1)                                                               # [B, V]
    cdf = logp.exp().cumsum(-1)                                                                 # [B, V]
    # right=True: the first token whose cdf exceeds u * total, so zero-probability tokens are never drawn
    tokens = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True).squeeze(1)
    tokens = tokens.clamp_(max=logits.shape[1] - 1)
    if not any_greedy:
        return tokens, logp.gather(1, tokens[:, None]).squeeze(1)
    tokens = torch.where(greedy, logits.argmax(-1), tokens)
    lp_sampled = logp.gather(1, tokens[:, None]).squeeze(1)
    lp_greedy = logits.log_softmax(-1).gather(1, tokens[:, None]).squeeze(1)
    return tokens, torch.where(greedy, lp_greedy, lp_sampled)


def sequence_seed(seed: int, prefix_index: int, sample_index: int) -> int:
    """A 63-bit seed for one sequence from the call's seed and its place in the call (splitmix64 mixing)."""
    x = (seed * 0x9E3779B97F4A7C15 + prefix_index * 0xBF58476D1CE4E5B9 + sample_index * 0x94D049BB133111EB) & _MASK64
    for mul in (0xBF58476D1CE4E5B9, 0x94D049BB133111EB):
        x = ((x ^ (x >> 31)) * mul) & _MASK64
    return (x ^ (x >> 29)) >> 1


_MASK64 = (1 << 64) - 1
