"""The MATH grader (rl/grading/math.py): last-box extraction and math-verify equivalence, on MATH-500."""
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rl.grading.math import grade_math, last_boxed, math_equal

DATA = Path(__file__).resolve().parent / "data" / "math500_test.jsonl"   # MATH-500 (MIT, LICENSE.math500)
RECORDS = [json.loads(line) for line in DATA.read_text().splitlines()]


def _bump(answer: str) -> str | None:
    """The answer with its first integer increased by one, or None when it has no digit."""
    m = re.search(r"\d+", answer)
    return None if m is None else answer[:m.start()] + str(int(m.group()) + 1) + answer[m.end():]


def test_every_gold_answer_is_its_solutions_last_box_and_equals_itself():
    assert len(RECORDS) == 500
    for r in RECORDS:
        assert last_boxed(r["solution"]) == r["answer"], r["unique_id"]
        assert grade_math(r["solution"], r["answer"]) == (r["answer"], True), r["unique_id"]


def test_perturbed_values_are_wrong():
    # a fixed subset (every 8th record) keeps the run short; all 489 with a digit were measured wrong (8 s)
    subset = RECORDS[::8]
    bumped = [(r["answer"], _bump(r["answer"])) for r in subset if _bump(r["answer"]) is not None]
    assert len(bumped) > 55
    for gold, wrong in bumped:
        assert not math_equal(wrong, gold), (gold, wrong)
    negated = [r["answer"] for r in subset if re.fullmatch(r"[\d.\\{}a-z]+", r["answer"]) and re.search(r"[1-9]", r["answer"])]
    assert len(negated) > 30
    for gold in negated:
        assert not math_equal("-" + gold, gold), gold


@pytest.mark.parametrize("prediction, gold", [
    ("14/3", "\\frac{14}{3}"), ("\\frac{14}{3}", "14/3"), ("0.5", "\\frac12"), ("\\frac12", "0.5"),
    ("\\dfrac{1}{2}", "\\frac{1}{2}"), ("x=3", "3"), ("x = 5", "5"), ("90", "90^\\circ"), ("90^\\circ", "90"),
    ("[1,2)", "[1, 2)"), ("(-\\infty,3]", "(-\\infty, 3]"), ("(3,\\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\sqrt{117}", "3\\sqrt{13}"), ("6 - 5i", "6-5i"), ("Evelyn", "\\text{Evelyn}"), ("\\frac54", "1.25"),
    ("10\\text{ cm}", "10"), ("x^5-x^4+x^3-x^2+x-1", "x^5 - x^4 + x^3 - x^2 + x - 1"), ("11\\sqrt{2}", "11\\sqrt2"),
])
def test_equivalent_rewrites_are_equal(prediction, gold):
    assert math_equal(prediction, gold)


@pytest.mark.parametrize("prediction, gold", [
    ("15/3", "\\frac{14}{3}"), ("x=4", "3"), ("91", "90^\\circ"), ("[1,2]", "[1,2)"), ("(1,2)", "[1,2)"),
    ("-0.5", "\\frac12"), ("0.51", "0.5"), ("p+q", "p - q"), ("\\text{Bob}", "\\text{Evelyn}"), ("6+5i", "6-5i"),
    ("3\\sqrt{12}", "3\\sqrt{13}"), ("53_8", "52_8"), (None, "3"), ("", "3"),
])
def test_different_values_are_not_equal(prediction, gold):
    assert not math_equal(prediction, gold)


def test_last_box_is_brace_matched():
    assert last_boxed("first \\boxed{1}, then \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert last_boxed("\\fbox{3}") == "3" and last_boxed("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"
    assert last_boxed("\\boxed 5.") == "5"
    assert last_boxed("cut off \\boxed{\\frac{1}{2}") is None and last_boxed("no box") is None
    assert grade_math("so $\\boxed{x=3}$.", "The answer is $\\boxed{3}$") == ("x=3", True)   # gold as a solution
    assert grade_math("the answer is 3", "3") == (None, False)                               # no box, no answer


def test_a_pathological_comparison_times_out_in_the_main_thread_and_in_others():
    tower = ("9^{9^{9^{9^{9}}}}", "9^{9^{9^{9^{8}}}}")
    t = time.time()
    assert not math_equal(*tower, timeout_s=1)
    assert time.time() - t < 10
    with ThreadPoolExecutor(2) as pool:  # off the main thread: a helper process applies the limit
        results = list(pool.map(lambda pg: math_equal(*pg[:2], timeout_s=pg[2]),
                                [(*tower, 1), ("14/3", "\\frac{14}{3}", 5), ("15/3", "\\frac{14}{3}", 5)]))
    assert results == [False, True, False]
