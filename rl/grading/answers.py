"""Answer extraction and equivalence: small pure functions."""
from __future__ import annotations

import re
from decimal import Decimal

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


# ---- numeric answers (GSM8K) ---------------------------------------------------------------------
_NUMBER = r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)"
_PLAIN_NUMBER_RE = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
# "The answer is N" (our reference solutions) or "#### N" (the GSM8K rationale format); "$" and ":" may precede N
_GSM8K_ANSWER_RE = re.compile(rf"(?:\bthe answer is|####)[ \t]*:?[ \t]*\$?[ \t]*({_NUMBER})", re.IGNORECASE)


def normalize_number(text: str) -> str | None:
    """Canonical text of a written number, or None if it is not one.

    Commas, a dollar sign and a sentence's final period are dropped; an integral value is written without
    decimals: "$1,250.00" -> "1250", "18." -> "18", "-3.50" -> "-3.5". Exponents, "nan" and "inf" are not numbers.
    """
    t = text.strip().replace(",", "").replace("$", "").strip().rstrip(".")
    if not _PLAIN_NUMBER_RE.fullmatch(t):
        return None
    value = Decimal(t)
    if value == value.to_integral_value():
        return str(int(value))  # also turns "-0" into "0"
    return format(value.normalize(), "f")


def numbers_equal(prediction: str | None, gold: str) -> bool:
    """Numeric equality of written numbers ("18" == "18.0" == "$18"); a missing or non-numeric prediction is wrong."""
    if prediction is None:
        return False
    a, b = normalize_number(prediction), normalize_number(gold)
    return a is not None and a == b


def extract_gsm8k_answer(text: str) -> str | None:
    """The number after the first "The answer is" or "####" in text, normalised (normalize_number), or None."""
    m = _GSM8K_ANSWER_RE.search(text)
    return None if m is None else normalize_number(m.group(1))
