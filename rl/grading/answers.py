"""Answer extraction and equivalence: small pure functions."""
from __future__ import annotations

import re

ANSWER_PREFIX = "Answer:"
_ANSWER_RE = re.compile(r"Answer:\s*(-?\d+)\s*$", re.MULTILINE)


def extract_final_answer(text: str) -> str | None:
    """The integer on the first 'Answer: N' line of text, as a canonical string, or None."""
    m = _ANSWER_RE.search(text)
    return None if m is None else str(int(m.group(1)))


def answers_equal(prediction: str | None, gold: str) -> bool:
    """Exact integer equality; a missing prediction is wrong."""
    if prediction is None:
        return False
    try:
        return int(prediction) == int(gold)
    except ValueError:
        return prediction.strip() == gold.strip()
