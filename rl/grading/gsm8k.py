"""GSM8K grading of free-form completions: find the final number however a model wrote it, compare values.

This is the lenient grader of `arbor grade --task gsm8k` (launch/grade.py), for completions of any model. The
GSM8K task's own reward (rl/tasks/gsm8k.py) stays strict: its policy is taught to end with "The answer is N".

Where the answer is, by the first marker kind present (the last occurrence of that kind counts):
    "#### N", "The answer is N", "\\boxed{N}", "A: N" / "Answer: N"; with none of them, the last number of the text.
What a number may look like: "1,250", "$1,250.00", "-3", "$-3", "-$3", ".5", "18.", "3/4", "\\frac{3}{4}", "-\\frac34",
"40%", "18 dollars" (a trailing unit or period is dropped). Two answers are equal when their values are
(exact rationals: "3/4" == "0.75" == "\\frac{3}{4}", "18" == "18.00"; "0.33" != "1/3").
"""
from __future__ import annotations

import re
from fractions import Fraction

from rl.grading.math import last_boxed

_CURRENCY = r"[$€£¥₹]"
# one written number: a sign and a currency sign in either order, digits with or without thousands separators,
# decimals, or a fraction a/b
_NUMBER_RE = re.compile(
    rf"(?<![\w.])(?P<sign>-?){_CURRENCY}?(?P<sign2>-?)[ \t]*"
    r"(?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?|\.\d+)")
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*(-?[\d.,]+)\s*\}\s*\{\s*(-?[\d.,]+)\s*\}|\\[dt]?frac\s*(\d)(\d)")
_LATEX_NOISE_RE = re.compile(r"\\[,!;: ]|\\(?:left|right|text|mathrm|textbf|boxed|fbox)\b|\{,\}|\\\$|\\%")
_MARKERS = [  # (kind, the text that leads the answer); the answer is the first number after the marker
    ("####", re.compile(r"####")),
    ("the answer is", re.compile(r"\bthe (?:final )?answer is\b[ \t:]*", re.IGNORECASE)),
    ("boxed", None),
    ("A:", re.compile(r"(?:(?<=\s)|^)(?:A|Answer):", re.MULTILINE)),
]


def _latex_to_plain(text: str) -> str:
    """\\frac{a}{b} -> a/b, and LaTeX spacing, \\text, \\left/\\right and escaped $ and % removed."""
    text = _FRAC_RE.sub(lambda m: f"{m.group(1) or m.group(3)}/{m.group(2) or m.group(4)}", text)
    return _LATEX_NOISE_RE.sub(lambda m: "$" if m.group(0) == "\\$" else "", text).replace("{", "").replace("}", "")


def _number_text(m: re.Match) -> str:
    """The matched number without currency and thousands separators, its sign in front: "-$1,250" -> "-1250"."""
    negative = (m.group("sign") == "-") != (m.group("sign2") == "-")
    return ("-" if negative else "") + m.group("num").replace(",", "")


def number_value(text: str | None) -> Fraction | None:
    """The exact value of one written number ("$1,250.00", "3/4", "-\\frac{1}{2}", "18 dollars"), or None."""
    if text is None:
        return None
    m = _NUMBER_RE.search(_latex_to_plain(text).strip())
    if m is None:
        return None
    t = _number_text(m)
    try:
        if "/" in t:
            num, den = t.split("/")
            return Fraction(num) / Fraction(den) if Fraction(den) != 0 else None
        return Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None


def extract_prediction(completion: str) -> str | None:
    """The final number of a completion, as written less currency and separators ("3/4", "-1250", "0.5"), or None."""
    text = completion
    for kind, marker in _MARKERS:
        if kind == "boxed":
            boxed = last_boxed(text)
            if boxed is not None:
                m = _NUMBER_RE.search(_latex_to_plain(boxed))
                return None if m is None else _number_text(m)
            continue
        hits = list(marker.finditer(text))
        if hits:
            m = _NUMBER_RE.search(_latex_to_plain(text[hits[-1].end():]))
            return None if m is None else _number_text(m)
    numbers = list(_NUMBER_RE.finditer(_latex_to_plain(text)))
    return _number_text(numbers[-1]) if numbers else None


def gold_value(gold: str) -> Fraction:
    """The value of a GSM8K gold answer: the number after the last "####" of a rationale, or a bare number.

    Raises:
        ValueError: when there is no number there.
    """
    tail = gold.rsplit("####", 1)[-1]
    value = number_value(tail)
    if value is None:
        raise ValueError(f"the gold answer {tail.strip()[:40]!r} is not a number")
    return value


def grade_gsm8k(completion: str, gold: str) -> tuple[str | None, bool]:
    """(the completion's final number, whether its value equals the gold answer's)."""
    prediction = extract_prediction(completion)
    value = number_value(prediction)
    return prediction, value is not None and value == gold_value(gold)
