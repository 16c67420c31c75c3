"""Few-shot examples: `{"input": str, "output": str}` records from JSONL files or Python lists.

A multiple-choice record may also list its options, `"options": ["yes", "no"]`, answered by
text (the output is " " + an option, the default) or, with `"answer_style": "letter"`, by letter
(" (B)"); with options, evaluation can rank-classify and `--contrast` can score the wrong options.
Bad input raises `ExampleError` naming the file, the line and the problem.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lorahub_serve.errors import LorahubError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class ExampleError(LorahubError, ValueError):
    """An example file or list is unusable; the message says where and why."""


AnswerStyle = Literal["", "letter", "text"]


@dataclass(frozen=True)
class TaskInfo:
    """What a task is, whatever its source: its kind, size and typical number of options."""

    name: str
    kind: str  # "multiple_choice" | "generative"
    n_examples: int
    n_options: int  # typical number of options; 0 for generative

    @property
    def chance(self) -> float:
        return 1.0 / self.n_options if self.n_options else 0.0


@dataclass(frozen=True)
class Example:
    """A prompt and its output. Multiple-choice examples also carry their options (texts in the
    order shown) and how they are answered: `letter` (" (B)") or `text` (" yes"); a user's JSONL
    example has neither (`answer_style` ""), and is scored by exact match."""

    input: str
    output: str
    options: tuple[str, ...] = ()
    answer_style: AnswerStyle = ""

    @property
    def choices(self) -> tuple[str, ...]:
        """The answer strings of the options, as an output would spell them (rank classification)."""
        if self.answer_style == "letter":
            return tuple(f" ({LETTERS[i]})" for i in range(len(self.options)))
        return tuple(f" {o}" for o in self.options)

    @property
    def gold_index(self) -> int | None:
        return self.choices.index(self.output) if self.output in self.choices else None


def _check_record(rec: Any, where: str) -> Example:
    if not isinstance(rec, dict):
        raise ExampleError(f"{where}: expected a JSON object with 'input' and 'output', got {type(rec).__name__}")
    for field in ("input", "output"):
        if field not in rec:
            raise ExampleError(f"{where}: missing field {field!r} (each example needs 'input' and 'output')")
        if not isinstance(rec[field], str):
            raise ExampleError(
                f"{where}: field {field!r} must be a string, got {type(rec[field]).__name__}"
            )
    if not rec["output"].strip():
        raise ExampleError(f"{where}: field 'output' is empty; an example needs a non-empty output")
    if "options" not in rec:
        if "answer_style" in rec:
            raise ExampleError(f"{where}: 'answer_style' needs 'options'")
        return Example(rec["input"], rec["output"])
    options, style = rec["options"], rec.get("answer_style", "text")
    if (not isinstance(options, list) or len(options) < 2
            or not all(isinstance(o, str) and o.strip() for o in options)):
        raise ExampleError(f"{where}: 'options' must be a list of at least two non-empty strings")
    if len(set(options)) != len(options):
        raise ExampleError(f"{where}: 'options' repeats an option")
    if style not in ("text", "letter"):
        raise ExampleError(f"{where}: 'answer_style' must be 'text' or 'letter', got {style!r}")
    ex = Example(rec["input"], rec["output"], tuple(options), style)
    if ex.gold_index is None:
        raise ExampleError(f"{where}: output {rec['output']!r} is none of the options' answers "
                           f"{list(ex.choices)}")
    return ex


def load_jsonl(path: str | Path) -> list[Example]:
    """Read one example per non-blank line; errors name `path:line`."""
    path = Path(path)
    if not path.exists():
        raise ExampleError(f"{path}: no such example file")
    examples = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ExampleError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            examples.append(_check_record(rec, f"{path}:{lineno}"))
    if not examples:
        raise ExampleError(f"{path}: the example file is empty; it needs at least one JSON line")
    return examples


def from_records(records: Iterable[Any], source: str = "examples") -> list[Example]:
    """Validate a Python list of dicts (or `Example`s / (input, output) pairs)."""
    out = []
    for i, rec in enumerate(records):
        if isinstance(rec, Example):  # keeps its options (rank classification, the option term)
            _check_record({"input": rec.input, "output": rec.output}, f"{source}[{i}]")
            out.append(rec)
            continue
        if isinstance(rec, (tuple, list)) and len(rec) == 2:
            rec = {"input": rec[0], "output": rec[1]}
        out.append(_check_record(rec, f"{source}[{i}]"))
    if not out:
        raise ExampleError(f"{source}: no examples given; at least one is needed")
    return out


def load_examples(src: str | Path | Sequence[Any]) -> list[Example]:
    """A JSONL path or a list of records."""
    if isinstance(src, (str, Path)):
        return load_jsonl(src)
    return from_records(src)


def to_record(ex: Example) -> dict[str, Any]:
    """The JSONL record of an example (options and answer style only when it has options)."""
    rec: dict[str, Any] = {"input": ex.input, "output": ex.output}
    if ex.options:
        rec["options"] = list(ex.options)
        rec["answer_style"] = ex.answer_style or "text"
    return rec


def write_jsonl(path: str | Path, examples: Iterable[Example]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(to_record(ex)) + "\n" for ex in examples)
