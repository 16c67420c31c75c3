"""The task interface (data/tasks.py) over real sources: reasoning-gym generated here, the
official BBH files from the copy beside the project (tests/conftest.py sets LORAHUB_BBH)."""

import json
import os
import subprocess
import sys

import pytest

from lorahub_serve.data import bbh_official, rg, tasks

# isomorphic_strings iterates over sets: without a fixed PYTHONHASHSEED its questions differ per process
HASH_DEPENDENT = "rg/isomorphic_strings"
needs_bbh = pytest.mark.skipif(not os.environ.get(bbh_official.SOURCE_ENV),
                               reason="needs the official BBH files (../shared/data/bbh or LORAHUB_BBH)")


def _examples_in_child(task: str, hashseed: str, home) -> str:
    code = ("import json, sys; from lorahub_serve.data import tasks; "
            f"print(json.dumps([[e.input, e.output] for e in tasks.load_task({task!r})]))")
    env = {**os.environ, "PYTHONHASHSEED": hashseed, "LORAHUB_HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    return out.stdout


def test_the_same_task_is_generated_identically_in_processes_with_different_hash_seeds(tmp_path):
    """Two processes, two PYTHONHASHSEEDs, two empty caches: the same examples, byte for byte."""
    a = _examples_in_child(HASH_DEPENDENT, "1", tmp_path / "a")
    b = _examples_in_child(HASH_DEPENDENT, "2", tmp_path / "b")
    assert a == b and len(json.loads(a)) > 500
    lf_a = _examples_in_child("rg/list_functions", "3", tmp_path / "a")  # calls the global random
    assert lf_a == _examples_in_child("rg/list_functions", "4", tmp_path / "b")


def test_generation_without_the_fixed_hash_seed_would_differ():
    """The guard above is needed: generated in-process under two hash seeds, the questions differ."""
    code = ("import reasoning_gym; d = reasoning_gym.create_dataset('isomorphic_strings', size=40, seed=7); "
            "print([d[i]['question'] for i in range(40)])")
    outs = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": s},
                           capture_output=True, text=True, timeout=120, check=True).stdout for s in ("1", "2")}
    assert len(outs) == 2


def test_questions_are_unique_and_evaluation_never_meets_shots_or_oracle_training():
    task = "rg/basic_arithmetic@add-2d"
    exs = tasks.load_task(task)
    assert len({e.input for e in exs}) == len(exs)  # deduplicated at generation
    held = set()
    for seed in (1, 2, 3):
        shots, evalset = tasks.split(exs, 5, 100, seed)
        assert len(evalset) == 100 and not {e.input for e in shots} & {e.input for e in evalset}
        held.add(tuple(e.input for e in evalset))
    assert len(held) == 1  # the evaluation set is fixed across seeds
    train, evalset = tasks.train_and_eval(task, 100)
    assert [e.input for e in evalset] == list(next(iter(held)))
    assert not {e.input for e in train} & set(next(iter(held)))
    assert len(train) + len(evalset) == len(exs)


def test_prompt_format_answer_style_and_provenance():
    ex = tasks.load_task("rg/gcd@le20")[0]
    assert ex.input.startswith("Q: ") and ex.input.endswith("\nA:") and ex.output.startswith(" ")
    assert ex.answer_style == "" and tasks.answer_style("rg/gcd@le20") == ""
    info = tasks.task_info("rg/gcd@le20")
    assert info.kind == "generative" and info.chance == 0.0 and info.n_examples > 150
    prov = tasks.provenance("rg/gcd@le20")
    assert prov == {"source": "reasoning-gym", "version": rg.VERSION, "dataset": "gcd", "category": "arithmetic",
                    "config": "le20", "params": {"max_value": 20}, "seed": rg.DATA_SEED, "size": rg.DEFAULT_SIZE}
    assert tasks.kinship("rg/gcd@le20") == ("gcd", "arithmetic")


def test_the_generators_own_score_is_available_beside_exact_match():
    ex = tasks.load_task("rg/gcd@le20")[0]
    assert tasks.native_score("rg/gcd@le20", ex.input, ex.output) == 1.0
    assert tasks.native_score("rg/gcd@le20", ex.input, " 12345") < 1.0  # gcd gives partial credit to any number
    assert tasks.native_score("rg/gcd@le20", "Q: not one of its questions\nA:", " 1") is None


@pytest.mark.parametrize("task,why", [
    ("rg/graph_color", "no reference answer"), ("rg/no_such_dataset", "has no dataset"),
    ("rg/gcd@no_such_config", "no config named"), ("rg/composite", "mixes other datasets"),
])
def test_unusable_reasoning_gym_names_are_refused_with_the_reason(task, why):
    with pytest.raises(rg.TaskSourceError, match=why):
        tasks.load_task(task)
    assert not tasks.exists(task)


@pytest.mark.parametrize("task", ["rg/chain_sum", "rg/family_relationships@x", "rg/aiw",
                                  "arithmetic/1_digit_addition", "bigbench/color/hcl"])
def test_reserved_tasks_are_refused(task):
    assert tasks.is_reserved(task)
    with pytest.raises(tasks.ReservedTask, match="reserved for an independent check"):
        tasks.refuse_for_training(task)


@needs_bbh
def test_bbh_loads_from_the_official_files_with_options_for_rank_classification():
    nav = tasks.load_task("bbh/navigate")
    raw = bbh_official.raw_examples("navigate")
    assert len(nav) == len(raw) == 250
    assert nav[0].input == f"Q: {raw[0]['input'].strip()}\nA:" and nav[0].output == f" {raw[0]['target']}"
    assert nav[0].options == ("No", "Yes") and nav[0].answer_style == "text"
    date = tasks.load_task("bbh/date_understanding")[0]
    assert date.answer_style == "letter" and date.output.strip() in {"(A)", "(B)", "(C)", "(D)", "(E)", "(F)"}
    assert date.choices[date.gold_index] == date.output
    counting = tasks.task_info("bbh/object_counting")
    assert counting.kind == "generative" and counting.chance == 0.0
    assert tasks.is_eval_only("bbh/navigate")
    with pytest.raises(tasks.ReservedTask, match="held out for evaluation"):
        tasks.refuse_for_training("bbh/navigate")


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "lorahub_serve.cli", *args], capture_output=True, text=True,
                          timeout=120, check=False, env=env)


@needs_bbh
def test_data_list_shows_every_source_and_data_fetch_bbh_copies_or_says_what_to_do(tmp_path):
    env = {**os.environ, "LORAHUB_HOME": str(tmp_path / "home")}
    env.pop(bbh_official.SOURCE_ENV)
    listed = _cli("data", "list", env=env)
    assert listed.returncode == 0
    heads = [line for line in listed.stdout.splitlines() if line.startswith("# ")]
    assert [h.split(":")[0] for h in heads] == ["# rg", "# bbh", "# bigbench", "# jsonl"]
    assert "not here" in heads[1] and "rg/gcd@le20" in listed.stdout and "rg/graph_color" not in listed.stdout
    assert "rg/chain_sum\treserved" in listed.stdout
    # no copy, no network here: one line, exit 2, saying what to do
    offline = _cli("data", "fetch", "bbh", env={**env, "https_proxy": "http://127.0.0.1:9"})
    assert offline.returncode == 2 and len(offline.stderr.strip().splitlines()) == 1
    assert "--from DIR" in offline.stderr
    copied = _cli("data", "fetch", "bbh", "--from", os.environ[bbh_official.SOURCE_ENV], env=env)
    assert copied.returncode == 0 and "27 BBH tasks" in copied.stdout, copied.stderr
    after = _cli("data", "list", "--source", "bbh", env=env)
    assert "bbh/navigate\theld out: evaluation only" in after.stdout
    bad = _cli("data", "fetch", "bbh", "--from", str(tmp_path), env=env)
    assert bad.returncode == 2 and "no boolean_expressions.json" in bad.stderr


def test_a_cached_task_reads_where_reasoning_gym_cannot_be_imported(tmp_path):
    """The GPU machine has no reasoning-gym: gpu_checks ships the cached JSONL, which must read
    without the package (and a task not cached says it cannot be generated)."""
    tasks.load_task("rg/gcd@le20")  # cached here, under this process's LORAHUB_HOME
    code = ("import sys; sys.modules['reasoning_gym'] = None\n"  # any import of it now fails
            "from lorahub_serve.data import tasks\n"
            "print(len(tasks.load_task('rg/gcd@le20')))\n"
            "try:\n    tasks.load_task('rg/lcm@le50')\nexcept Exception as e:\n    print(type(e).__name__)\n")
    home = tmp_path / "home"
    cache = home / "downloads" / "reasoning_gym"
    cache.mkdir(parents=True)
    dataset, config = rg.parse("rg/gcd@le20")
    src = rg._cache_file(dataset, config, rg.DEFAULT_SIZE)
    (cache / src.name).write_bytes(src.read_bytes())
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "LORAHUB_HOME": str(home)},
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert out == [str(len(tasks.load_task("rg/gcd@le20"))), "TaskSourceError"]


def test_native_percent_is_the_generators_own_score_beside_exact_match(tmp_path):
    evalset = tasks.load_task("rg/gcd@le20")[:8]
    assert tasks.native_percent("rg/gcd@le20", evalset, [e.output for e in evalset]) == 100.0
    partial = tasks.native_percent("rg/gcd@le20", evalset, [" 12345"] * len(evalset))
    assert 0.0 < partial < 100.0  # gcd's scorer gives any number partial credit; exact match gives 0
    (tmp_path / "own.jsonl").write_text('{"input": "Q: a\\nA:", "output": " b"}\n')
    own = str(tmp_path / "own.jsonl")
    assert tasks.native_percent(own, tasks.load_task(own), [" b"]) is None  # no scorer of its own
