"""Losses and the batches they read: plain torch, shared by the learner and tests."""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100  # label of positions the SFT loss skips (prompt and padding)


def sft_batch(tokenizer, prompts: list[str], completions: list[str], max_len: int, *,
              eos: bool = True) -> dict[str, torch.Tensor]:
    """Right-padded token ids with labels only on the completion (and its EOS, for whole solutions).

    A pair longer than max_len drops tokens from the start of the prompt first, then from the end of
    the completion.

    Returns input_ids, attention_mask and labels, each [B, T].
    """
    rows, labels = [], []
    for p, c in zip(prompts, completions):
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        c_ids = tokenizer(c, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if eos else [])
        cut = min(max(len(p_ids) + len(c_ids) - max_len, 0), len(p_ids))
        p_ids = p_ids[cut:]  # too long: the prompt loses its start first, so the completion keeps its labels
        ids = (p_ids + c_ids)[:max_len]
        rows.append(ids)
        labels.append(([IGNORE] * len(p_ids) + c_ids)[:max_len])
    return _pad(rows, labels, tokenizer.pad_token_id)


def value_batch(tokenizer, states: list[str], max_len: int) -> dict[str, torch.Tensor]:
    """Right-padded token ids of states (truncated on the left so the last token survives)."""
    rows = [tokenizer(s, add_special_tokens=False)["input_ids"][-max_len:] for s in states]
    return _pad(rows, None, tokenizer.pad_token_id)


def _pad(rows: list[list[int]], labels: list[list[int]] | None, pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": mask}
    if labels is not None:
        out["labels"] = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
        if labels is not None:
            out["labels"][i, :len(r)] = torch.tensor(labels[i])
    return out


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions (0 when none is). logits [B, T, V], labels [B, T]."""
    if not bool((labels[:, 1:] != IGNORE).any()):
        return logits.sum() * 0.0  # a graph with zero gradients: every rank still takes its step
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE)


def value_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of V(s) = sigmoid(logit) against soft targets in [0, 1]. Both [B]."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B] sum of log p(label) over each row's labelled positions. logits [B, T, V], labels [B, T]."""
    logp = logits[:, :-1].float().log_softmax(-1)                        # [B, T-1, V]
    target = labels[:, 1:]                                               # [B, T-1]
    mask = target != IGNORE
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # [B, T-1]
    return (picked * mask).sum(-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, *, beta: float) -> torch.Tensor:
    """Direct preference optimisation (Rafailov et al. 2023), here on sibling steps (step-level DPO):
    -log sigmoid(beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r)))), mean over pairs. All [B]."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean()
