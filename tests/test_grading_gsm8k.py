"""The lenient GSM8K grader (rl/grading/gsm8k.py) on the whole GSM8K test split and on hand-written forms."""
import json
import re
from pathlib import Path

import pytest

from rl.grading.gsm8k import extract_prediction, gold_value, grade_gsm8k

TEST = Path(__file__).resolve().parent / "data" / "gsm8k_test.jsonl"   # the GSM8K test split (MIT, LICENSE.gsm8k)
RECORDS = [json.loads(line) for line in TEST.read_text().splitlines()]


def test_every_gold_answer_grades_correct_and_perturbations_wrong():
    assert len(RECORDS) == 1319
    for r in RECORDS:
        final = r["answer"].rsplit("####", 1)[1].strip()
        for completion in (r["answer"], final, f"The answer is {final}.", f"\\boxed{{{final}}}", f"A: ${final}"):
            assert grade_gsm8k(completion, r["answer"])[1], (completion[-40:], r["answer"][-20:])
        value = gold_value(r["answer"])
        changed = re.sub(r"\d+", lambda m: str(int(m.group()) + 1), final, count=1)
        assert not grade_gsm8k(f"The answer is {changed}", r["answer"])[1], changed
        if value != 0:
            assert not grade_gsm8k(f"The answer is -{final}", r["answer"])[1], final


@pytest.mark.parametrize("completion, gold, prediction", [
    ("So she makes $1,250.00 dollars.", "1250", "1250.00"),           # currency, separators, unit, period
    ("The answer is -5", "-5", "-5"),
    ("#### 3/4", "0.75", "3/4"),                                      # a fraction equal to the gold decimal
    ("The answer is: \\boxed{\\frac{3}{4}}", "0.75", "3/4"),
    ("\\boxed{-\\frac{1}{2}}", "-0.5", "-1/2"),
    ("Q: how many?\nA: 42 apples", "42", "42"),
    ("It costs -$3.50 overall", "-3.5", "-3.50"),                     # the last number, no marker
    ("9 * 2 = 18.", "Janet makes 9 * 2 = <<9*2=18>>18.\n#### 18", "18"),  # the gold as a full rationale
    ("The answer is 40%.", "40", "40"),
    ("There are 1,000,000 people", "1000000", "1000000"),
    ("The answer is 7.\nOn reflection, the answer is 8", "8", "8"),  # the last occurrence of the marker
    ("£12 each", "12", "12"),
])
def test_accepted_forms(completion, gold, prediction):
    assert grade_gsm8k(completion, gold) == (prediction, True)


@pytest.mark.parametrize("completion, gold", [
    ("The answer is 19", "18"), ("The answer is -18", "18"), ("0.33", "1/3"), ("no number here", "5"),
    ("The answer is 1,250", "125"), ("#### 18\nThe answer is 19", "19"),  # "####" outranks "The answer is"
])
def test_wrong_answers(completion, gold):
    assert not grade_gsm8k(completion, gold)[1]


def test_a_gold_without_a_number_is_an_error():
    with pytest.raises(ValueError, match="is not a number"):
        gold_value("rationale\n#### many")
    assert extract_prediction("") is None
