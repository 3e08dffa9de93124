"""Prompt synthesis: AlphaLLM's "imagination" (Tian et al. 2024, §4.1).

AlphaLLM grows its training prompts in two ways, both here as plain functions:

* A curriculum for generated tasks (`Curriculum`, `arithmetic_config_for`): the embedded arithmetic
  generator is made harder round by round, so the policy keeps meeting problems at the edge of
  what it can solve.
* Rewriting for language tasks (`synthesize`): the policy rewrites seed questions (rephrase, change
  the numbers, ask the reverse question), a rewrite too close to the eval set is dropped
  (decontamination by word n-gram overlap), and the survivors get a gold answer by self-consistency
  (Wang et al. 2023): the majority answer of several sampled solutions, kept only when enough of the
  samples agree on it.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterable, Protocol

import numpy as np

from rl.config import ArithmeticConfig
from rl.tasks.base import Problem, Task

if TYPE_CHECKING:  # the policy module pulls in torch; synthesis itself never needs it
    from rl.models.policy import StepSample


# ---- curriculum ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Curriculum:
    """Difficulty level of the generated problems of each round.

    Schedule: a linear ramp from `start_level` at round 1 to `end_level` at round `ramp_rounds + 1`,
    flat afterwards; integer levels round down, so each level is held for about
    ramp_rounds / (end_level - start_level) rounds. `ramp_rounds = 0` starts at `end_level`.
    A fraction `easy_frac` of each round's problems is drawn uniformly from the easier levels
    [start_level, level(r) - 1], which keeps earlier skills rehearsed (none at round 1).
    """
    start_level: int = 0
    end_level: int = 4
    ramp_rounds: int = 4
    easy_frac: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.start_level <= self.end_level:
            raise ValueError("imagination curriculum: need 0 <= start_level <= end_level")
        if self.ramp_rounds < 0 or not 0.0 <= self.easy_frac <= 1.0:
            raise ValueError("imagination curriculum: need ramp_rounds >= 0 and 0 <= easy_frac <= 1")

    def level(self, round_: int) -> int:
        """The level of round `round_` (1-based)."""
        if round_ < 1:
            raise ValueError(f"rounds are 1-based, got {round_}")
        if self.ramp_rounds == 0:
            return self.end_level
        done = min(round_ - 1, self.ramp_rounds)
        return self.start_level + (self.end_level - self.start_level) * done // self.ramp_rounds

    def levels(self, round_: int, n: int, rng: np.random.Generator) -> list[int]:
        """Levels of the n problems of a round: round(easy_frac * n) easier ones, the rest at level(round_)."""
        top = self.level(round_)
        n_easy = int(round(self.easy_frac * n)) if top > self.start_level else 0
        easy = rng.integers(self.start_level, top, size=n_easy).tolist()
        return [int(x) for x in easy] + [top] * (n - n_easy)


def arithmetic_config_for(level: int, base: ArithmeticConfig, *, max_operands_cap: int = 8) -> ArithmeticConfig:
    """The arithmetic generator's knobs at a difficulty level.

    Level 0 is `base` itself; each level adds one operand (up to `max_operands_cap`, or base's own
    max_operands when that is larger) and one more `base.max_value` to the operand range (up to
    `base.max_result`, which bounds every intermediate result). Both knobs are non-decreasing in level.
    """
    if level < 0:
        raise ValueError(f"curriculum level must be >= 0, got {level}")
    return replace(base, max_operands=max(base.max_operands, min(max_operands_cap, base.max_operands + level)),
                   max_value=max(base.max_value, min(base.max_result, base.max_value * (level + 1))))


# ---- rewriting language tasks --------------------------------------------------------------------
REWRITE_TEMPLATES = {
    "rephrase": ("Rewrite the following problem in other words. Keep every number and the quantity it asks for.\n"
                 "Problem: {question}\nRewritten problem:"),
    "change_numbers": ("Rewrite the following problem with different numbers, so that it still has exactly one "
                       "whole-number answer.\nProblem: {question}\nNew problem:"),
    "reverse": ("Write the reverse of the following problem: give its answer as a known fact and ask for one of "
                "the numbers it states instead.\nProblem: {question}\nReverse problem:"),
}


def rewrite_prompt(template: str, question: str) -> str:
    """The prompt that asks the policy to rewrite `question` with REWRITE_TEMPLATES[template]."""
    if template not in REWRITE_TEMPLATES:
        raise ValueError(f"rewrite template {template!r}: known templates are {', '.join(REWRITE_TEMPLATES)}")
    return REWRITE_TEMPLATES[template].format(question=question)


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())  # case and punctuation do not hide a copy
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def build_ngram_index(eval_texts: Iterable[str], n: int) -> frozenset[tuple[str, ...]]:
    """Every word n-gram (lower-cased words) of the eval texts."""
    if n < 1:
        raise ValueError(f"n-gram size must be >= 1, got {n}")
    return frozenset(g for t in eval_texts for g in _ngrams(t, n))


def ngram_overlap(text: str, eval_ngrams: frozenset[tuple[str, ...]] | set[tuple[str, ...]], n: int) -> float:
    """Fraction of text's word n-grams found in eval_ngrams; 0.0 for a text shorter than n words."""
    if eval_ngrams and len(next(iter(eval_ngrams))) != n:
        raise ValueError(f"the n-gram index holds {len(next(iter(eval_ngrams)))}-grams, not {n}-grams")
    grams = _ngrams(text, n)
    return sum(g in eval_ngrams for g in grams) / len(grams) if grams else 0.0


def answer_agreement(answers: list[str | None]) -> tuple[str | None, float]:
    """The majority answer and the fraction of all samples that give it (None never agrees).

    Ties go to the answer seen first. No samples, or no answer at all, gives (None, 0.0).
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, 0.0
    answer, k = counts.most_common(1)[0]
    return answer, k / len(answers)


class RewritingPolicy(Protocol):
    """What `synthesize` needs of a policy: `rl.models.policy.Policy` and the test fakes provide it."""

    def sample_steps(self, prefixes: list[str], n: int, *, temperature: float = 1.0, max_new_tokens: int = 24,
                     seed: int | None = None) -> list[list[StepSample]]: ...

    def complete(self, prefixes: list[str], *, max_new_tokens: int = 128, temperature: float = 0.0,
                 seed: int | None = None) -> list[StepSample]: ...


# what `synthesize` counts (metrics imagination/NAME); proposed = kept + the three dropped_*
REWRITE_COUNTS = ("proposed", "kept", "dropped_invalid", "dropped_overlap", "dropped_disagree")


def problem_id(seed_id: str, template: str, question: str) -> str:
    """Stable id of a synthesized problem: its seed, its template and a hash of its text."""
    return f"{seed_id}-{template}-{hashlib.sha1(question.encode()).hexdigest()[:10]}"


def synthesize(seeds: list[Problem], policy: RewritingPolicy, task: Task, *, templates: list[str], samples: int,
               min_agreement: float, eval_index: frozenset[tuple[str, ...]], max_overlap: float, n: int,
               rng: np.random.Generator, temperature: float = 0.8, question_max_tokens: int = 96,
               solution_max_tokens: int = 256) -> tuple[list[Problem], dict]:
    """New problems rewritten from seeds, decontaminated and labelled by self-consistency.

    For every (seed, template) the policy writes one rewritten question: a single line, so
    `sample_steps` (which stops at a newline) gives exactly the question. A question that is empty
    or repeats a seed or an earlier proposal is dropped (`dropped_invalid`); one whose word n-gram
    overlap with the eval set exceeds `max_overlap` is dropped (`dropped_overlap`). Every survivor
    gets `samples` sampled solutions (`complete`, all in one batch); the majority answer
    (`task.extract_answer`) becomes the gold answer when its agreement is >= `min_agreement`
    (`kept`), otherwise the question is dropped (`dropped_disagree`).

    Args:
        templates: names in REWRITE_TEMPLATES, applied to every seed.
        eval_index: `build_ngram_index(eval questions, n)`.
        rng: seeds the two policy calls, so a run is reproducible.
    Returns:
        (problems, metrics): problems in (seed, template) order, each with the first agreeing
        solution as its reference; counts under `imagination/`.
    """
    if samples < 1 or not 0.0 <= min_agreement <= 1.0:
        raise ValueError("imagination: need samples >= 1 and 0 <= min_agreement <= 1")
    jobs = [(s, t, rewrite_prompt(t, s.question)) for s in seeds for t in templates]
    outs = policy.sample_steps([p for _, _, p in jobs], 1, temperature=temperature,
                               max_new_tokens=question_max_tokens, seed=int(rng.integers(2**31)))
    counts = Counter(proposed=len(jobs))
    seen = {s.question for s in seeds}
    candidates: list[Problem] = []
    for (seed, template, _), out in zip(jobs, outs):
        question = out[0].text.strip() if out else ""
        if not question or question in seen:
            counts["dropped_invalid"] += 1
            continue
        seen.add(question)
        if ngram_overlap(question, eval_index, n) > max_overlap:
            counts["dropped_overlap"] += 1
            continue
        candidates.append(Problem(id=problem_id(seed.id, template, question), question=question, answer=""))
    prefixes = [task.prompt(c) for c in candidates for _ in range(samples)]
    solutions = policy.complete(prefixes, max_new_tokens=solution_max_tokens, temperature=temperature,
                                seed=int(rng.integers(2**31))) if prefixes else []
    kept: list[Problem] = []
    for i, cand in enumerate(candidates):
        texts = [s.text for s in solutions[i * samples:(i + 1) * samples]]  # this candidate's samples
        answers = [task.extract_answer(t) for t in texts]
        answer, agreement = answer_agreement(answers)
        if answer is None or agreement < min_agreement:
            counts["dropped_disagree"] += 1
            continue
        counts["kept"] += 1
        kept.append(replace(cand, answer=answer, solution=texts[answers.index(answer)]))
    return kept, {f"imagination/{k}": counts[k] for k in REWRITE_COUNTS}
