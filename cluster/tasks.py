"""The task list of a batch job: `tasks.jsonl`, or (name, examples) pairs from Python.

One JSON object per line: {"name": ..., "examples": [{"input", "output"}, ...]} or
{"name": ..., "examples_path": "file.jsonl"} (relative to the tasks file). A line whose name is
missing, invalid or repeated makes the whole file unusable (`TasksFileError`, naming the line);
a task whose examples are unusable becomes a `TaskSpec` with `error` set: it fails alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorahub_serve.data.examples import Example, ExampleError, from_records, load_examples
from lorahub_serve.errors import LorahubError
from lorahub_serve.formats import NAME_RULE, valid_name


class TasksFileError(LorahubError, ValueError):
    """The task list cannot be used at all; the message names the line and the problem."""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    examples: tuple[Example, ...] = ()
    error: str | None = None  # why the examples are unusable; the task then fails alone


def check_task_name(name: Any, where: str) -> str:
    """A task name is also its folder in the store, so it follows the adapter-name rule."""
    if not valid_name(name):
        raise TasksFileError(f"{where}: invalid task name {name!r}; use {NAME_RULE} "
                             "(it names the output folder)")
    return name


def _spec(name: str, examples: Any, where: str) -> TaskSpec:
    try:
        if isinstance(examples, (str, Path)):
            exs = load_examples(examples)
        else:
            exs = from_records(examples, source=f"{where} examples")
    except ExampleError as e:
        return TaskSpec(name, error=str(e))
    return TaskSpec(name, tuple(exs))


def read_tasks_file(path: str | Path) -> list[TaskSpec]:
    """Parse a tasks.jsonl file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise TasksFileError(f"{path}: no such tasks file")
    specs, seen = [], {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise TasksFileError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict):
            raise TasksFileError(f"{where}: expected an object with 'name' and 'examples' or "
                                 f"'examples_path', got {type(rec).__name__}")
        name = check_task_name(rec.get("name"), where)
        if name in seen:
            raise TasksFileError(f"{where}: task name {name!r} repeats line {seen[name]}; names must be unique")
        seen[name] = lineno
        has_inline, has_path = "examples" in rec, "examples_path" in rec
        if has_inline == has_path:
            specs.append(TaskSpec(name, error=f"{where}: give exactly one of 'examples' (a list) "
                                              "or 'examples_path' (a JSONL file)"))
        elif has_path:
            ex_path = rec["examples_path"]
            if not isinstance(ex_path, str):
                specs.append(TaskSpec(name, error=f"{where}: 'examples_path' must be a string"))
            else:
                specs.append(_spec(name, path.parent / ex_path, where))
        elif not isinstance(rec["examples"], list):
            specs.append(TaskSpec(name, error=f"{where}: 'examples' must be a list of "
                                              "{'input', 'output'} objects"))
        else:
            specs.append(_spec(name, rec["examples"], where))
    if not specs:
        raise TasksFileError(f"{path}: no tasks (the file is empty)")
    return specs


def specs_from_pairs(tasks: Iterable[tuple[str, Any]]) -> list[TaskSpec]:
    """(name, examples) pairs, examples being records, `Example`s or a JSONL path."""
    specs, seen = [], set()
    for i, pair in enumerate(tasks):
        if isinstance(pair, TaskSpec):
            name, spec = pair.name, pair
        else:
            name, examples = pair
            spec = None
        check_task_name(name, f"tasks[{i}]")
        if name in seen:
            raise TasksFileError(f"tasks[{i}]: task name {name!r} repeats; names must be unique")
        seen.add(name)
        specs.append(spec or _spec(name, examples, f"tasks[{i}] ({name})"))
    if not specs:
        raise TasksFileError("no tasks given")
    return specs
