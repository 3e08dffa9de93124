"""Step termination functions: where one reasoning step (an AlphaLLM "option") ends.

AlphaLLM (Tian et al. 2024, §4.2) searches over options: a sequence of tokens that a
termination function ends. The right unit depends on the task (a line of arithmetic, a
paragraph of a word problem that holds a formula, a statement or a block of code), so each task picks one
of the functions below by name (`TERMINATIONS`, config key `task.termination`).

Each termination has three parts:

    stop_strings    what a generation engine stops on; a stop only *proposes* a boundary.
    ends(text)      True when `text`, generated from the start of a step, holds a complete step.
    split(text)     a full solution cut into its steps; "".join(split(text)) == text.

The engine contract: generate a step until a stop string appears, then call `ends` on everything
generated for this step so far. If it is False (a paragraph break before any formula, a line that
opens a code block), keep generating the same step and ask again at the next stop. When it is True
the step is `split(text)[0]`; this equals `text` except when a code block is closed by a dedented
line, which is visible only once that line has been generated (the rest then starts the next step).
`ends` and `split` share one boundary finder, so a step found while generating is the step that
`split` finds in the finished solution.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Protocol


class Termination(Protocol):
    stop_strings: tuple[str, ...]

    def ends(self, text: str) -> bool:
        """True when text (generated from the start of a step) holds a complete step."""

    def split(self, text: str) -> list[str]:
        """The steps of a full solution; their concatenation is the text."""


def _cut(text: str, bounds: list[int]) -> list[str]:
    """Pieces of text between boundary offsets; the tail after the last boundary is the last piece."""
    cuts = [0, *bounds, len(text)]
    return [text[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]


class StepsFromBounds:
    """ends and split of a termination from its `bounds(text)`: the end offsets of the complete steps."""

    def ends(self, text: str) -> bool:
        return bool(self.bounds(text))

    def split(self, text: str) -> list[str]:
        return _cut(text, self.bounds(text))


@dataclass(frozen=True)
class NewlineStep:
    """A step is one line, ending at (and including) its newline: the arithmetic scratchpad's unit."""
    name: ClassVar[str] = "newline"
    stop_strings: tuple[str, ...] = ("\n",)

    def bounds(self, text: str) -> list[int]:
        return [m.end() for m in re.finditer("\n", text)]

    def ends(self, text: str) -> bool:
        return "\n" in text

    def split(self, text: str) -> list[str]:
        return _cut(text, self.bounds(text))


# A formula: a number or a one-letter variable, an operator, then a number, on one line
# ("3 + 4 = 7", "x = 12", "2x - 5", "10/(2"). Dates such as "2024-05" also match; that only
# lets a paragraph end, never cuts one, so it is harmless.
FORMULA_RE = re.compile(r"(?:\d|(?<![A-Za-z])[A-Za-z](?![A-Za-z]))[ \t]*[-+*/=][ \t]*[-(]?\d")


@dataclass(frozen=True)
class FormulaParagraphStep(StepsFromBounds):
    """A step is a paragraph that holds a formula: it ends at the first "\\n\\n" after a formula.

    Word problems (GSM8K style) spend paragraphs setting up before they compute; a paragraph break
    before any formula does not end the step, so every step carries at least one computation that a
    critic can judge. The engine stops on "\\n\\n", calls `ends`, and continues the same step while
    it is False.
    """
    name: ClassVar[str] = "formula_paragraph"
    stop_strings: tuple[str, ...] = ("\n\n",)

    def bounds(self, text: str) -> list[int]:
        out, start = [], 0
        for m in re.finditer("\n\n", text):  # left to right, like a stop string
            if FORMULA_RE.search(text, start, m.start()):  # a formula in this step, before the break
                out.append(m.end())
                start = m.end()
        return out


# A LaTeX formula (MATH solutions): a $...$ span with an operator or a command in it, or a display (\[, \(,
# \begin{...}); "$5$" alone is not one
LATEX_FORMULA_RE = re.compile(r"\$[^$]*[-+*/=<>^_\\][^$]*\$|\\\[|\\\(|\\begin\{")


@dataclass(frozen=True)
class LatexFormulaParagraphStep(FormulaParagraphStep):
    """FormulaParagraphStep for LaTeX solutions (MATH): a step ends at the first "\\n\\n" after a formula, plain
    (FORMULA_RE) or LaTeX (LATEX_FORMULA_RE), AlphaLLM's rule for MATH."""
    name: ClassVar[str] = "latex_formula_paragraph"

    def bounds(self, text: str) -> list[int]:
        out, start = [], 0
        for m in re.finditer("\n\n", text):
            if FORMULA_RE.search(text, start, m.start()) or LATEX_FORMULA_RE.search(text, start, m.start()):
                out.append(m.end())
                start = m.end()
        return out


_CLAUSE_RE = re.compile(r"(else|elif|except|finally)\b")  # continue a block at its own level
_STRING_RE = re.compile(r"'(?:\\.|[^'\\])*'?|\"(?:\\.|[^\"\\])*\"?")  # one-line strings, maybe unclosed


def _code_only(line: str) -> str:
    """The line without string literals and its comment, so brackets and ':' are only code."""
    return _STRING_RE.sub("''", line).split("#", 1)[0]


def _bracket_delta(code: str) -> int:
    return sum(code.count(c) for c in "([{") - sum(code.count(c) for c in ")]}")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


@dataclass(frozen=True)
class CodeStep(StepsFromBounds):
    """A step is one statement of Python-like code; a block statement takes its whole block.

    Rule, line by line (a logical line joins physical lines while a bracket is open):
      * a logical line that does not end with ':' ends the step at its newline;
      * one that ends with ':' opens a block at its indentation L; the step then runs through every
        following line indented deeper than L (nested blocks included), and through `else`, `elif`,
        `except` and `finally` lines at level L;
      * the block, and the step, end at a blank line (included in the step) or just before the first
        non-blank line indented at most L (a dedent);
      * blank lines between statements belong to the next statement; a decorator line (`@...`) does
        not end a step, its `def`/`class` does.
    A blank line ends the block even inside a function body: it is the one block end an engine can
    see without generating the next line. Not handled: strings spanning lines (triple quotes),
    backslash continuations.
    """
    name: ClassVar[str] = "code"
    stop_strings: tuple[str, ...] = ("\n",)

    def bounds(self, text: str) -> list[int]:
        out: list[int] = []
        block: int | None = None   # indentation L of the line that opened this step's block
        depth = 0                  # brackets left open by earlier physical lines
        start_indent = 0           # indentation of the current logical line's first line
        pos = 0
        for line in re.findall(r"[^\n]*\n|[^\n]+", text):
            end, complete, body = pos + len(line), line.endswith("\n"), line.rstrip("\n")
            if depth == 0:
                if not body.strip():
                    if block is not None and complete:  # a blank line closes the block
                        out.append(end)
                        block = None
                    pos = end
                    continue
                ind = _indent(body)
                if block is not None and (ind < block or ind == block and not _CLAUSE_RE.match(body.lstrip())):
                    out.append(pos)  # dedent: the block ended before this line
                    block = None
                start_indent = ind
            code = _code_only(body)
            depth = max(0, depth + _bracket_delta(code))
            if depth == 0 and complete and block is None:  # a logical line ended outside any block
                if code.rstrip().endswith(":"):
                    block = start_indent
                elif not code.lstrip().startswith("@"):
                    out.append(end)
            pos = end
        return out


_HEADER_RE = re.compile(r"(async\s+def|def|class)\b")  # a function or class header


@dataclass(frozen=True)
class CodeBlockStep(StepsFromBounds):
    """A step is a block of code: lines up to a blank line or a dedent back to the level the step began at.

    The level L is the indentation of the step's first non-blank line: in a function body, the body's level.
    Rule, line by line (a logical line joins physical lines while a bracket is open):
      * a blank line ends the step (it is included) once the step holds code; blank lines before any code
        belong to the step;
      * a non-blank line indented at most L, after a line indented deeper than L, ends the step just
        before it (a dedent back to L), except `else`, `elif`, `except` and `finally` at L;
      * a function or class header (`def`, `async def`, `class`, with its decorators) is a step of its
        own: it ends at the newline of the logical line that ends with ':', and a header at level <= L
        later in a step ends that step just before it. So a program's steps are its imports, each
        function's header, then the blocks of its body.
    Simple statements in a row at L are one step. Not handled, as in CodeStep: strings spanning lines
    (triple quotes), backslash continuations.
    """
    name: ClassVar[str] = "code_block"
    stop_strings: tuple[str, ...] = ("\n",)

    def bounds(self, text: str) -> list[int]:
        out: list[int] = []
        level: int | None = None  # indentation L of this step's first non-blank line; None before any code
        deeper = False            # a logical line of this step began deeper than L
        header = False            # every logical line of this step so far is a decorator or a header
        depth = 0                 # brackets left open by earlier physical lines
        pos = 0
        for line in re.findall(r"[^\n]*\n|[^\n]+", text):
            end, complete, body = pos + len(line), line.endswith("\n"), line.rstrip("\n")
            if depth == 0:
                if not body.strip():
                    if level is not None and complete:  # a blank line ends a step that holds code
                        out.append(end)
                        level = None
                    pos = end
                    continue
                ind, stripped = _indent(body), body.lstrip()
                opens_def = bool(_HEADER_RE.match(stripped)) or stripped.startswith("@")
                if level is not None and ind <= level and (
                        deeper and not (ind == level and _CLAUSE_RE.match(stripped))
                        or opens_def and not header):
                    out.append(pos)  # a dedent back to L, or a new function: the step ended before this line
                    level = None
                if level is None:
                    level, deeper, header = ind, False, opens_def
                elif ind > level:
                    deeper = True
                header = header and opens_def
            code = _code_only(body)
            depth = max(0, depth + _bracket_delta(code))
            if depth == 0 and complete and header and code.rstrip().endswith(":"):
                out.append(end)  # the header line (after its decorators) is a step of its own
                level = None
            pos = end
        return out


TERMINATIONS = {"newline": NewlineStep, "formula_paragraph": FormulaParagraphStep,
                "latex_formula_paragraph": LatexFormulaParagraphStep, "code": CodeStep, "code_block": CodeBlockStep}


def termination_for(name: str) -> Termination:
    """The termination function registered under name (the value of `task.termination`)."""
    if name not in TERMINATIONS:
        raise ValueError(f"task.termination = {name!r}: known terminations are {', '.join(TERMINATIONS)}")
    return TERMINATIONS[name]()
