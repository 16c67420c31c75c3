"""tasks.jsonl parsing: unusable files fail whole, naming the line; bad examples fail one task."""

import json

import pytest

from lorahub_serve.cluster.tasks import TasksFileError, read_tasks_file, specs_from_pairs

GOOD = [{"input": "Q: a?\nA:", "output": " yes"}]


def _write(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_inline_and_relative_path(tmp_path):
    (tmp_path / "data").mkdir()
    _write(tmp_path / "data" / "b.jsonl", GOOD * 2)
    f = _write(tmp_path / "tasks.jsonl", [{"name": "a", "examples": GOOD}, "",
                                          {"name": "b", "examples_path": "data/b.jsonl"}])
    specs = read_tasks_file(f)
    assert [(s.name, len(s.examples), s.error) for s in specs] == [("a", 1, None), ("b", 2, None)]


@pytest.mark.parametrize("rec, message", [
    ({"name": "a", "examples": [{"input": "q"}]}, "missing field 'output'"),
    ({"name": "a", "examples_path": "nope.jsonl"}, "no such example file"),
    ({"name": "a"}, "exactly one of 'examples'"),
    ({"name": "a", "examples": GOOD, "examples_path": "x"}, "exactly one of 'examples'"),
    ({"name": "a", "examples": "text"}, "must be a list"),
    ({"name": "a", "examples": []}, "no examples given"),
])
def test_bad_examples_fail_only_their_task(tmp_path, rec, message):
    f = _write(tmp_path / "tasks.jsonl", [rec, {"name": "ok", "examples": GOOD}])
    bad, ok = read_tasks_file(f)
    assert message in bad.error and not bad.examples
    assert ok.error is None


@pytest.mark.parametrize("line, message", [
    ("{not json", r"tasks.jsonl:1: invalid JSON"),
    ("[1, 2]", r"tasks.jsonl:1: expected an object"),
    ({"examples": GOOD}, r"tasks.jsonl:1: invalid task name None"),
    ({"name": "../up", "examples": GOOD}, r"invalid task name '../up'"),
    ({"name": ".jobs", "examples": GOOD}, r"invalid task name '.jobs'"),
])
def test_unusable_lines_name_the_line(tmp_path, line, message):
    f = _write(tmp_path / "tasks.jsonl", [line])
    with pytest.raises(TasksFileError, match=message):
        read_tasks_file(f)


def test_duplicate_and_empty(tmp_path):
    f = _write(tmp_path / "tasks.jsonl", [{"name": "a", "examples": GOOD}] * 2)
    with pytest.raises(TasksFileError, match=r":2: task name 'a' repeats line 1"):
        read_tasks_file(f)
    with pytest.raises(TasksFileError, match="no tasks"):
        read_tasks_file(_write(tmp_path / "empty.jsonl", [""]))
    with pytest.raises(TasksFileError, match="no such tasks file"):
        read_tasks_file(tmp_path / "missing.jsonl")


def test_pairs_api(tmp_path):
    _write(tmp_path / "e.jsonl", GOOD)
    specs = specs_from_pairs([("a", GOOD), ("b", tmp_path / "e.jsonl"), ("c", [])])
    assert [s.error is None for s in specs] == [True, True, False]
    with pytest.raises(TasksFileError, match="repeats"):
        specs_from_pairs([("a", GOOD), ("a", GOOD)])
