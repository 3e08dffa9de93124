"""Rejection-sampling fine-tuning (RFT; ReST-EM, Singh et al. 2023; STaR, Zelikman et al. 2022).

Per prompt: N complete solutions sampled from the policy, the ones the task's verifier accepts kept,
deduplicated by text and capped per prompt; the policy is then fine-tuned on them. No search, no critic.
Plain functions: the rollout worker samples (`sample_solutions`), the controller selects (`select_verified`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rl.tasks.base import Problem, Task


@dataclass
class RFTSample:
    """One sampled solution with the verifier's reward of it."""
    problem_id: str
    prompt: str
    solution: str
    reward: float        # task.reward(problem, solution): 1.0 when the answer and the working check out
    tokens: int          # tokens the policy generated for it
    policy_version: int = 0


def sample_solutions(problems: list[Problem], task: Task, policy, *, n: int, temperature: float,
                     max_new_tokens: int, batch_size: int, rng: np.random.Generator,
                     policy_version: int = 0) -> list[RFTSample]:
    """n complete solutions per problem, in problem order (the n samples of a problem together).

    Prompts are repeated n times and generated `batch_size` sequences per policy.complete call, each call
    seeded from rng. Every sample is scored by task.reward, so nothing past this point reads the gold.
    """
    jobs = [p for p in problems for _ in range(n)]  # [len(problems) * n]
    out: list[RFTSample] = []
    for i in range(0, len(jobs), batch_size):
        chunk = jobs[i:i + batch_size]
        outs = policy.complete([task.prompt(p) for p in chunk], max_new_tokens=max_new_tokens,
                               temperature=temperature, seed=int(rng.integers(2**31)))
        out += [RFTSample(problem_id=p.id, prompt=task.prompt(p), solution=o.text,
                          reward=float(task.reward(p, o.text)), tokens=int(o.num_tokens),
                          policy_version=policy_version)
                for p, o in zip(chunk, outs)]
    return out


def solution_key(solution: str) -> str:
    """What two solutions must share to count as one: the text with whitespace runs collapsed."""
    return " ".join(solution.split())


def select_verified(samples: list[RFTSample], *, max_per_prompt: int) -> list[RFTSample]:
    """The SFT data of an RFT round: samples with reward == 1, the first of each distinct text
    (solution_key) per problem, at most max_per_prompt per problem, in the order given."""
    if max_per_prompt < 1:
        raise ValueError(f"rft.max_per_prompt = {max_per_prompt!r}: keep at least one solution per prompt")
    seen: dict[str, set[str]] = {}
    kept: list[RFTSample] = []
    for s in samples:
        if s.reward != 1.0:
            continue
        keys = seen.setdefault(s.problem_id, set())
        key = solution_key(s.solution)
        if key in keys or len(keys) >= max_per_prompt:
            continue
        keys.add(key)
        kept.append(s)
    return kept


def rft_metrics(samples: list[RFTSample], kept: list[RFTSample], num_problems: int) -> dict:
    """Counts of one RFT round, under rft/ (plus rollout/solved_frac, the search loop's name for the share
    of prompts with training data, and tokens/generated)."""
    verified = [s for s in samples if s.reward == 1.0]
    distinct = {(s.problem_id, solution_key(s.solution)) for s in verified}
    solved = {s.problem_id for s in verified}
    return {"rft/samples": len(samples), "rft/verified": len(verified), "rft/distinct_verified": len(distinct),
            "rft/kept": len(kept),
            "rft/sample_acc": float(np.mean([s.reward == 1.0 for s in samples])) if samples else 0.0,
            "rft/pass_at_n": len(solved) / max(num_problems, 1),  # prompts with >= 1 verified sample
            "rollout/solved_frac": len(solved) / max(num_problems, 1),
            "tokens/generated": int(sum(s.tokens for s in samples))}
