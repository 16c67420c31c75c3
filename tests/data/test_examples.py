"""Few-shot example files: good input loads, each kind of bad input names file, line and problem."""

import pytest

from lorahub_serve.data import Example, ExampleError, from_records, load_jsonl


def _write(tmp_path, text):
    p = tmp_path / "ex.jsonl"
    p.write_text(text)
    return p


def test_loads_jsonl_and_skips_blank_lines(tmp_path):
    p = _write(tmp_path, '{"input": "a", "output": "b"}\n\n{"input": "c", "output": "d"}\n')
    assert load_jsonl(p) == [Example("a", "b"), Example("c", "d")]


@pytest.mark.parametrize("text, problem", [
    ("", "empty"),
    ("\n  \n", "empty"),
    ('{"input": "a", "output": "b"}\n{"input": "a", "output": \n', ":2: invalid JSON"),
    ('{"output": "b"}\n', ":1: missing field 'input'"),
    ('{"input": "a"}\n', ":1: missing field 'output'"),
    ('{"input": 3, "output": "b"}\n', ":1: field 'input' must be a string, got int"),
    ('{"input": "a", "output": ["b"]}\n', ":1: field 'output' must be a string, got list"),
    ('{"input": "a", "output": "  "}\n', ":1: field 'output' is empty"),
    ('["a", "b"]\n', ":1: expected a JSON object"),
])
def test_bad_jsonl_names_file_line_and_problem(tmp_path, text, problem):
    p = _write(tmp_path, text)
    with pytest.raises(ExampleError) as e:
        load_jsonl(p)
    assert str(p) in str(e.value) and problem in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ExampleError, match="no such example file"):
        load_jsonl(tmp_path / "nope.jsonl")


def test_python_lists():
    assert from_records([("a", "b"), {"input": "c", "output": "d"}]) == [Example("a", "b"), Example("c", "d")]
    with pytest.raises(ExampleError, match=r"examples\[1\]: field 'output' is empty"):
        from_records([("a", "b"), ("c", "")])
    with pytest.raises(ExampleError, match="no examples"):
        from_records([])


def test_jsonl_options_round_trip_and_give_rank_classification_its_gold(tmp_path):
    from lorahub_serve.data.examples import write_jsonl

    p = tmp_path / "mc.jsonl"
    p.write_text('{"input": "Is ice cold?", "output": " yes", "options": ["yes", "no"]}\n'
                 '{"input": "Pick the fruit", "output": " (B)", "options": ["rock", "pear"], '
                 '"answer_style": "letter"}\n'
                 '{"input": "plain", "output": " x"}\n')
    text, letter, plain = load_jsonl(p)
    assert (text.choices, text.gold_index) == ((" yes", " no"), 0)
    assert (letter.choices, letter.gold_index) == ((" (A)", " (B)"), 1)
    assert plain.options == () and plain.gold_index is None
    write_jsonl(tmp_path / "again.jsonl", [text, letter, plain])
    assert load_jsonl(tmp_path / "again.jsonl") == [text, letter, plain]


@pytest.mark.parametrize("extra, problem", [
    ('"options": ["yes"]', "at least two non-empty strings"),
    ('"options": "yes, no"', "at least two non-empty strings"),
    ('"options": ["yes", "yes"]', "repeats an option"),
    ('"options": ["maybe", "no"]', "none of the options' answers"),
    ('"options": ["yes", "no"], "answer_style": "roman"', "'text' or 'letter'"),
    ('"answer_style": "letter"', "needs 'options'"),
])
def test_bad_options_name_the_line_and_problem(tmp_path, extra, problem):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"input": "q", "output": " yes", ' + extra + '}\n')
    with pytest.raises(ExampleError, match=problem) as e:
        load_jsonl(p)
    assert f"{p}:1" in str(e.value)
