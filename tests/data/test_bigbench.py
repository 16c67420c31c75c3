"""The BIG-bench loader (`bigbench/<task>`, from a copy named by LORAHUB_BIGBENCH): formatting,
option order, answer kinds, splits.

BIG-bench left PyPI, so these tests read small fixture files in BIG-bench's task.json schema
(`tests/fixtures/bigbench/`, 40 examples each, not BIG-bench data): one per formatting rule the
loader has (per-example lettered options, a fixed label set answered as text, letter labels bound
to the input, task and example prefixes, answer-first files, counts spelt as words). The `realdata`
tests check facts of the real files; they run with LORAHUB_TEST_REAL_BIGBENCH=1 and a copy."""

import collections

import pytest

from lorahub_serve.data import bigbench, is_bbh, refuse_bbh

# The fixtures' BBH tasks (the real files' full list is data.bbh.BBH_TASKS)
BBH_FIXTURES = ("causal_judgment", "date_understanding", "hyperbaton", "logical_deduction/three_objects",
                "navigate", "object_counting", "snarks", "sports_understanding", "temporal_sequences",
                "word_sorting")


pytestmark = pytest.mark.usefixtures("bigbench_fixtures")  # tests/conftest.py

EXPECTED_COUNTS = {"penguins_in_a_table": 149, "causal_judgment": 190,
                   "logical_deduction/three_objects": 300, "word_sorting": 1900}


def test_lists_tasks_and_subtasks():
    tasks = bigbench.list_tasks()
    assert tasks == sorted(tasks) and set(BBH_FIXTURES) <= set(tasks)
    assert "navigate" in tasks and "logical_deduction/three_objects" in tasks


@pytest.mark.parametrize("task", BBH_FIXTURES)
def test_every_bbh_task_loads_all_its_examples(task):
    raw = bigbench.read_task_json(task)["examples"]
    exs = bigbench.load_task(task)
    assert len(exs) == len(raw) > 0


# Facts of the real files (the sdist's), not of the fixtures.
@pytest.mark.realdata
def test_the_real_data_lists_at_least_150_tasks():
    assert len(bigbench.list_tasks()) >= 150


@pytest.mark.realdata
@pytest.mark.parametrize("task", sorted(EXPECTED_COUNTS))
def test_the_real_files_hold_their_known_example_counts(task):
    assert len(bigbench.load_task(task)) == EXPECTED_COUNTS[task]


def test_per_example_options_are_lettered():
    ex = bigbench.load_task("date_understanding")[0]
    raw = bigbench.read_task_json("date_understanding")["examples"][0]
    assert ex.input.startswith("Q: ") and ex.input.endswith("\nA:")
    assert "\nOptions:\n(A) " in ex.input and "(B) " in ex.input and ex.answer_style == "letter"
    letter = ex.output.strip()[1]
    shown = {line[1]: line[4:] for line in ex.input.splitlines() if line[:1] == "(" and line[2:4] == ") "}
    assert raw["target_scores"][shown[letter]] == max(raw["target_scores"].values())
    assert ex.choices[ex.gold_index] == ex.output and list(shown.values()) == list(ex.options)


def test_fixed_label_set_is_answered_with_the_label_text():
    ex = bigbench.load_task("sports_understanding")[0]
    raw = bigbench.read_task_json("sports_understanding")["examples"][0]
    assert ex.answer_style == "text" and sorted(ex.options) == ["implausible", "plausible"]
    assert "\nOptions: " in ex.input and "(A)" not in ex.input
    assert raw["target_scores"][ex.output.strip()] == 1
    assert ex.choices == tuple(f" {o}" for o in ex.options)


# What BBH itself answers with (Suzgun et al., 2022, bbh/*.json targets).
BBH_TARGET_KIND = {
    "causal_judgment": "word", "formal_fallacies_syllogisms_negation": "word", "navigate": "word",
    "sports_understanding": "word", "dyck_languages": "free", "object_counting": "free",
    "word_sorting": "free",
}


@pytest.mark.parametrize("task", BBH_FIXTURES)
def test_answer_kind_matches_bbh(task):
    """Words for yes/no-style label sets, letters where BBH letters the options, free text else."""
    want = BBH_TARGET_KIND.get(task, "letter")
    for ex in bigbench.load_task(task)[:50]:
        out = ex.output.strip()
        is_letter = len(out) == 3 and out[0] == "(" and out[2] == ")" and out[1].isupper()
        assert is_letter == (want == "letter"), (task, out)
        if want == "word":
            assert out in ex.options and len(ex.options) == 2 and ex.answer_style == "text"
        if want == "free":
            assert not is_letter


@pytest.mark.parametrize("task", ["hyperbaton", "snarks"])
def test_letter_labels_name_the_options_in_the_input(task):
    """hyperbaton's labels are a/b, snarks' (a)/(b): the letter names the input's option, unshuffled."""
    for ex, raw in zip(bigbench.load_task(task)[:30], bigbench.read_task_json(task)["examples"]):
        best = max(raw["target_scores"], key=raw["target_scores"].get)
        assert ex.output == f" ({best.strip('()').upper()})" and ex.options == ("(A)", "(B)")


def test_generative_format_uses_target_and_task_prefix():
    """word_sorting's file sets a task prefix and its own input/output prefixes; the answer is the
    target. A target given as a list answers with its first entry."""
    spec = bigbench.read_task_json("word_sorting")
    raw = spec["examples"][0]
    assert isinstance(raw["target"], str)  # this file's targets are strings: the list case is below
    ex = bigbench.load_task("word_sorting")[0]
    assert ex.input == f"Sort the following words alphabetically:\nList: {raw['input'].strip()}\nSorted:"
    assert ex.output == " " + raw["target"].strip()
    assert "Options:" not in ex.input and ex.answer_style == "" and ex.options == ()

    listed = bigbench.format_example({"input": " 2 + 2 ", "target": ["four", "4"]},
                                     {"task_prefix": "Add."}, "made_up_task", 0)
    assert (listed.input, listed.output) == ("Add.\nQ: 2 + 2\nA:", " four")


@pytest.mark.parametrize("task", ["date_understanding", "temporal_sequences"])
def test_correct_option_position_is_spread(task):
    """The files list the right answer first; shown order must not leak it."""
    exs = bigbench.load_task(task)
    counts = collections.Counter(e.output for e in exs)
    n_opts = bigbench.task_info(task).n_options
    assert len(counts) == n_opts
    assert max(counts.values()) / len(exs) < 2 / n_opts  # roughly uniform (40 examples), far from 99%


def test_option_order_is_seeded():
    a, b, c = (bigbench.load_task("navigate", seed=s)[:20] for s in (0, 0, 1))
    assert a == b and a != c


def test_split_is_deterministic_and_disjoint():
    from lorahub_serve.data.tasks import split

    exs = bigbench.load_task("navigate")
    shots1, ev1 = split(exs, 5, 20, seed=1)
    shots1b, ev1b = split(exs, 5, 20, seed=1)
    shots2, ev2 = split(exs, 5, 20, seed=2)
    assert (shots1, ev1) == (shots1b, ev1b)
    assert ev1 == ev2 and shots1 != shots2  # fixed evaluation set, seeded few-shot draw
    assert len(ev1) == 20 and not set(map(id, shots1)) & set(map(id, ev1))
    assert not set(shots1) & set(ev1)


def test_bbh_is_refused_for_training():
    assert is_bbh("logical_deduction/five_objects") and not is_bbh("strategyqa")
    with pytest.raises(ValueError, match="held-out Big-Bench Hard"):
        refuse_bbh("navigate")


def test_normalisation():
    assert bigbench.normalize_answer(" (A). ") == "(a)"
    assert bigbench.normalize_answer("Paris.") == "paris"


def test_counts_are_digits_as_in_bbh_and_either_spelling_scores():
    counts = bigbench.load_task("object_counting")
    assert all(e.output.strip().isdigit() for e in counts)  # BIG-bench's "twelve" is BBH's "12"
    assert bigbench.number_as_digits("twenty-one") == "21" and bigbench.number_as_digits("Twelve") == "12"
    assert bigbench.number_as_digits("apples") == "apples"
    from lorahub_serve.data.examples import Example
    from lorahub_serve.scoring import score
    gold = Example("Q: how many?\nA:", " 12")
    assert score(" 12\nQ: next", gold) and score(" twelve.", gold)
    assert not score(" 13", gold) and not score(" 120", gold)


def test_a_missing_copy_is_one_error_that_says_how_to_supply_one(monkeypatch, tmp_path):
    monkeypatch.setenv(bigbench.SOURCE_ENV, str(tmp_path / "nowhere"))
    bigbench.clear_caches()
    with pytest.raises(bigbench.BigBenchUnavailable, match=f"{bigbench.SOURCE_ENV}=.*nowhere"):
        bigbench.list_tasks()


def test_the_generic_frame_replaces_only_the_tasks_own_prefixes():
    task = "unnatural_in_context_learning/dates"  # its own frame: "Input: …\nOutput:"
    natural, generic = bigbench.load_task(task)[:20], bigbench.load_task(task, generic=True)[:20]
    assert natural[0].input.startswith("Input: ") and natural[0].input.endswith("\nOutput:")
    for n, g in zip(natural, generic, strict=True):
        assert g.output == n.output
        body = n.input.removeprefix("Input: ").removesuffix("\nOutput:")
        assert g.input == f"Q: {body}\nA:"
    tense = "tense"  # already in the generic frame: unchanged
    assert bigbench.load_task(tense)[:20] == bigbench.load_task(tense, generic=True)[:20]
