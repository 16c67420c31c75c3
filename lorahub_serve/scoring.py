"""Exact match: one answer extractor, the same for every method (zero-shot, ICL, LoraHub, …).

An answer is read from the start of its first non-blank line:
- multiple choice: the option it names, by letter ("(B)", "B", "B)", "B." — letter-style examples
  only) or by option text (case-insensitive). When several readings match the start, the longest
  wins, and a match must end at a word boundary: "invalid" never reads as "valid", nor
  "validity"; "Valid, because …" does, and "not ironic" reads as "not ironic", not "ironic".
- generative (no options): the reference's normalisation (`bigbench.normalize_answer`) of the
  first line equals that of the gold output.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from lorahub_serve.data.bigbench import normalize_answer
from lorahub_serve.data.examples import LETTERS, Example

# Answers end at a blank line: the few-shot prompts separate examples with one, and a model that
# has answered (ICL especially) goes on to invent the next example.
STOP = "\n\n"

# "(B)", "(b)", "B", "B)", "B." at the start; a bare letter must be upper case (not the word "a").
_LETTER = re.compile(r"\(([A-Za-z])\)|([A-Z])[).]?")


def first_line(answer: str) -> str:
    """The answer's first non-blank line, stripped."""
    stripped = answer.strip()
    return stripped.split("\n", 1)[0].strip()


def _ends_at_boundary(text: str, end: int) -> bool:
    """True when `text[:end]` does not stop inside a word (as the regex `\\b` would say)."""
    return end >= len(text) or not (text[end - 1].isalnum() and text[end].isalnum())


def _letter_reading(line: str, n_options: int) -> tuple[int, int] | None:
    """(length of the match, option index) for a leading option letter, if any."""
    m = _LETTER.match(line)
    if m is None or not _ends_at_boundary(line, m.end()):
        return None
    i = LETTERS.index((m.group(1) or m.group(2)).upper())
    return (m.end(), i) if i < n_options else None


def _text_readings(line: str, options: Sequence[str]) -> list[tuple[int, int]]:
    """(length, option index) of every option text that starts the line at a word boundary."""
    low = line.casefold()
    out = []
    for i, opt in enumerate(options):
        text = opt.strip().casefold()
        if text and low.startswith(text) and _ends_at_boundary(low, len(text)):
            out.append((len(text), i))
    return out


def extract_option(answer: str, example: Example) -> int | None:
    """The index of the option `answer` names (see the module docstring), or None."""
    line = first_line(answer)
    readings = _text_readings(line, example.options)
    if example.answer_style == "letter":
        letter = _letter_reading(line, len(example.options))
        if letter is not None:
            readings.append(letter)
    return max(readings, key=lambda r: r[0])[1] if readings else None


def score(answer: str, example: Example) -> bool:
    """Whether `answer` is right for `example`: it names the gold option (multiple choice), or
    its first line equals the gold output after the reference normalisation (generative)."""
    gold = example.gold_index
    if example.options and gold is not None:
        return extract_option(answer, example) == gold
    return normalize_answer(first_line(answer)) == normalize_answer(example.output)


def accuracy(preds: Sequence[str], examples: Sequence[Example]) -> float:
    """Exact match in percent: `score` over aligned answers and examples (0 for none)."""
    if len(preds) != len(examples):
        raise ValueError(f"accuracy needs one answer per example, got {len(preds)} answers for "
                         f"{len(examples)} examples")
    return 100.0 * sum(score(p, e) for p, e in zip(preds, examples)) / max(len(examples), 1)
