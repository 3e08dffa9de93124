import pytest

from rl.tasks.termination import (TERMINATIONS, CodeStep, FormulaParagraphStep, NewlineStep, termination_for)

NEWLINE, FORMULA, CODE = NewlineStep(), FormulaParagraphStep(), CodeStep()


def generate(term, text: str) -> list[str]:
    """Replay the engine contract on a finished text: stop at each stop string, ask `ends`, keep split()[0]."""
    steps, rest = [], text
    while rest:
        cut = None
        for i in range(1, len(rest) + 1):
            if any(rest[:i].endswith(s) for s in term.stop_strings) and term.ends(rest[:i]):
                cut = len(term.split(rest[:i])[0])
                break
        cut = cut or len(rest)  # no boundary before the end: the tail is the last step
        steps.append(rest[:cut])
        rest = rest[cut:]
    return steps


def check_round_trip(term, text: str, expected: list[str]) -> None:
    assert term.split(text) == expected
    assert "".join(term.split(text)) == text
    assert generate(term, text) == expected  # generation finds the same steps as split


def test_registry_and_stop_strings():
    assert set(TERMINATIONS) == {"newline", "formula_paragraph", "latex_formula_paragraph", "code", "code_block"}
    assert isinstance(termination_for("code"), CodeStep)
    assert NEWLINE.stop_strings == ("\n",) and FORMULA.stop_strings == ("\n\n",) and CODE.stop_strings == ("\n",)
    with pytest.raises(ValueError, match=r"task\.termination = 'lines'.*newline, formula_paragraph, latex_formula_paragraph, code"):
        termination_for("lines")


def test_newline():
    assert NEWLINE.ends("8*2-7\n") and not NEWLINE.ends("8*2-7") and not NEWLINE.ends("")
    check_round_trip(NEWLINE, "8*2-7\n16-7\n9\nAnswer: 9\n", ["8*2-7\n", "16-7\n", "9\n", "Answer: 9\n"])
    check_round_trip(NEWLINE, "a\n\nb", ["a\n", "\n", "b"])
    assert NEWLINE.split("") == []


def test_formula_paragraph_needs_a_formula():
    setup = "Tom has some apples.\n\n"
    assert not FORMULA.ends(setup)                                  # a break before any formula: continue
    assert not FORMULA.ends(setup + "He buys 4 more, so 3 + 4 = 7")   # a formula but no break yet
    assert FORMULA.ends(setup + "He buys 4 more, so 3 + 4 = 7.\n\n")
    assert FORMULA.ends("Let x = 12.\n\n") and FORMULA.ends("So 2x - 5 is it.\n\n")
    assert not FORMULA.ends("Ann is 3 years old.\n\n")             # a number is not a formula
    assert not FORMULA.ends("A well-known fact.\n\n")               # nor a hyphen inside words
    assert not FORMULA.ends("3 +\n\n4 = 7")                         # a formula must sit on one line
    text = ("Tom has 3 apples.\n\nHe buys 4 more: 3 + 4 = 7.\n\n"
            "Then he eats 2: 7 - 2 = 5.\n\n\nAnswer: 5\n")
    check_round_trip(FORMULA, text, ["Tom has 3 apples.\n\nHe buys 4 more: 3 + 4 = 7.\n\n",
                                     "Then he eats 2: 7 - 2 = 5.\n\n", "\nAnswer: 5\n"])


def test_code_simple_lines_and_brackets():
    assert CODE.ends("x = 1\n") and not CODE.ends("x = 1")
    assert not CODE.ends("total = sum([\n")                         # inside an unclosed bracket
    assert CODE.ends("total = sum([\n    1, 2,\n])\n")
    assert CODE.ends("s = 'a(' + \"[\"  # open ( in a comment\n")    # brackets in strings/comments do not count
    check_round_trip(CODE, "x = 1\ny = f(x,\n      2)\n\nz = 3",
                     ["x = 1\n", "y = f(x,\n      2)\n", "\nz = 3"])


def test_code_blocks_run_to_dedent_or_blank_line():
    assert not CODE.ends("for i in range(3):\n")                   # a block opener continues the step
    assert not CODE.ends("for i in range(3):\n    total += i\n")   # the block may go on
    assert CODE.ends("for i in range(3):\n    total += i\n\n")      # a blank line closes it
    assert not CODE.ends("def f(a,\n      b):  # two args\n    return a\n")  # ':' after a closed bracket
    dedent = "if x:\n    y = 1\nprint(y)\n"
    assert CODE.ends(dedent) and CODE.split(dedent)[0] == "if x:\n    y = 1\n"  # found when print( arrives
    assert CODE.split("if x:\n    y = 1\nz") == ["if x:\n    y = 1\n", "z"]
    assert not CODE.ends("if x:\n    y = 1\nelse:\n    y = 2\n")   # else continues the if


def test_code_nested_blocks_round_trip():
    text = ("import math\n"
            "@cache\n"
            "def f(n):\n"
            "    for i in range(n):\n"
            "        if i % 2:\n"
            "            n += i\n"
            "        else:\n"
            "            n -= 1\n"
            "    return n\n"
            "class A:\n"
            "    def g(self):\n"
            "        return 1\n"
            "\n"
            "print(f(3))\n")
    check_round_trip(CODE, text, [
        "import math\n",
        "@cache\ndef f(n):\n    for i in range(n):\n        if i % 2:\n            n += i\n"
        "        else:\n            n -= 1\n    return n\n",
        "class A:\n    def g(self):\n        return 1\n\n",
        "print(f(3))\n"])
