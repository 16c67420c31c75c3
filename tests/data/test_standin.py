"""The synthetic BIG-bench stand-in (lorahub_serve/data/standin.py) and LORAHUB_BIGBENCH, the
variable that names the task data: a folder of task folders or an sdist tarball."""

import collections
import io
import json
import os
import tarfile

import pytest

from lorahub_serve.data import BBH_TASKS, bigbench, standin

SOME = ("navigate", "date_understanding", "linguistic_mappings/plural_json", "fact_checker/politifact",
        "logical_deduction/three_objects")




@pytest.fixture
def source(monkeypatch, tmp_path):
    """Point LORAHUB_BIGBENCH elsewhere for one test (cache in tmp_path); restored after."""
    monkeypatch.setenv("LORAHUB_HOME", str(tmp_path / "home"))

    def use(path):
        monkeypatch.setenv(bigbench.SOURCE_ENV, str(path))
        bigbench.clear_caches()

    yield use
    monkeypatch.undo()
    bigbench.clear_caches()


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("task.json"))}


def test_the_stand_in_is_deterministic_and_seeded_by_the_task_name(tmp_path):
    a = _files(standin.write_standin(tmp_path / "a"))
    b = _files(standin.write_standin(tmp_path / "b"))
    assert a == b and len(a) == len(standin.default_tasks())
    assert set(standin.default_tasks()) >= set(BBH_TASKS)
    strategy, winowhy = (standin.make_task(t)["examples"] for t in ("strategyqa", "winowhy"))
    assert strategy != winowhy  # same kind (Yes/No), other content


def test_every_file_says_it_is_synthetic(tmp_path):
    root = standin.write_standin(tmp_path / "s", ["navigate", "made_up_task/sub"])
    for f in root.rglob("task.json"):
        spec = json.loads(f.read_text())
        assert spec[standin.MARKER] is True and "synthetic stand-in" in spec["description"].lower()
        assert "not BIG-bench data" in spec["description"] and spec["examples"]


def test_the_suite_runs_on_the_stand_in_and_it_covers_the_projects_task_lists():
    if os.environ.get("LORAHUB_TEST_REAL_BIGBENCH") == "1":
        pytest.skip("running on the real data")
    from lorahub_serve.eval.suite import SUITE_CANDIDATES
    from lorahub_serve.hub.build import BROAD_HUB_TASKS, DEFAULT_HUB_TASKS

    assert standin.standin_active() and standin.is_standin("navigate")
    listed = set(bigbench.list_tasks())
    for names in (BBH_TASKS, DEFAULT_HUB_TASKS, BROAD_HUB_TASKS, SUITE_CANDIDATES, standin.default_tasks()):
        assert not set(names) - listed
    assert "no_such_task" not in listed  # unknown names stay unknown to the loader
    for task in listed:
        info = bigbench.task_info(task)
        assert info.n_examples >= 150, task  # enough for a 100-example evaluation set and shots


def test_a_folder_of_task_folders_loads(source, tmp_path):
    root = standin.write_standin(tmp_path / "tasks", SOME)
    source(root)
    assert bigbench.list_tasks() == sorted(SOME)
    assert bigbench.load_task("navigate") and standin.is_standin("navigate") and standin.standin_active()
    empty = tmp_path / "empty"
    empty.mkdir()
    source(empty)  # a folder without task.json files
    with pytest.raises(bigbench.BigBenchUnavailable, match=bigbench.SOURCE_ENV):
        bigbench.list_tasks()


def _sdist(root, tarball):
    """An sdist-shaped tarball of the task folders under `root`."""
    with tarfile.open(tarball, "w:gz") as tf:
        for task, data in _files(root).items():
            info = tarfile.TarInfo(f"bigbench-1.0.0/bigbench/benchmark_tasks/{task}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        readme = tarfile.TarInfo("bigbench-1.0.0/README.md")  # not a task: left out
        tf.addfile(readme, io.BytesIO(b""))
    return tarball


def test_an_sdist_tarball_loads(source, tmp_path):
    root = standin.write_standin(tmp_path / "tasks", SOME)
    tarball = _sdist(root, tmp_path / "bigbench-1.0.0.tar.gz")
    source(tarball)
    assert bigbench.list_tasks() == sorted(SOME)
    folder = bigbench.load_task("linguistic_mappings/plural_json")
    source(root)
    assert folder == bigbench.load_task("linguistic_mappings/plural_json")  # the same examples either way


def test_a_missing_source_names_the_variable(source, tmp_path):
    source(tmp_path / "nowhere")
    with pytest.raises(bigbench.BigBenchUnavailable, match=f"{bigbench.SOURCE_ENV}=.*nowhere"):
        bigbench.list_tasks()
    assert not standin.standin_active()


# The properties the loader's tests rely on, checked on the stand-in's own files so that those
# tests keep meaning something.

def test_per_example_options_list_the_right_answer_first_as_the_real_files_do():
    for task, n in (("date_understanding", 6), ("temporal_sequences", 4)):
        raw = standin.make_task(task)["examples"]
        assert all(len(e["target_scores"]) == n for e in raw)
        assert all(next(iter(e["target_scores"].values())) == 1 for e in raw)  # so the shuffle matters
        assert len({frozenset(e["target_scores"]) for e in raw}) > len(raw) // 2  # options change


def test_bbh_answer_forms():
    labels = {t: {frozenset(e["target_scores"]) for e in standin.make_task(t)["examples"]}
              for t in ("causal_judgment", "formal_fallacies_syllogisms_negation", "navigate",
                        "sports_understanding", "hyperbaton", "snarks")}
    assert labels == {"causal_judgment": {frozenset({"Yes", "No"})},
                      "formal_fallacies_syllogisms_negation": {frozenset({"valid", "invalid"})},
                      "navigate": {frozenset({"True", "False"})},
                      "sports_understanding": {frozenset({"plausible", "implausible"})},
                      "hyperbaton": {frozenset({"a", "b"})}, "snarks": {frozenset({"(a)", "(b)"})}}
    counts = standin.make_task("object_counting")["examples"]
    assert all(e["target"].isalpha() for e in counts)  # spelt as words, as BIG-bench does
    sorting = standin.make_task("word_sorting")
    assert sorting["task_prefix"] == "Sort the following words alphabetically:"
    assert all(e["target"] == " ".join(sorted(e["input"].split())) for e in sorting["examples"])


def test_the_suites_twins_and_the_two_option_fact_checker():
    def answers(task):
        return {e["target"] for e in standin.make_task(f"linguistic_mappings/{task}")["examples"]}

    assert answers("plural_regular_json") < answers("plural_json")
    assert answers("de_past_tense_regular_json") < answers("de_past_tense_json")
    assert not answers("past_tense_json") & (answers("plural_json") | answers("de_past_tense_json"))
    politifact = standin.make_task("fact_checker/politifact")["examples"]
    assert len(politifact) == 400 and len({e["input"] for e in politifact}) == 400
    assert {len(e["target_scores"]) for e in politifact} == {2}
    right = collections.Counter(max(e["target_scores"], key=e["target_scores"].get) for e in politifact)
    assert min(right.values()) > 0.3 * len(politifact)  # both labels are answers


def test_unknown_names_get_a_generic_task_of_a_sensible_kind():
    assert standin.kind_of("made_up_task") == "letter"
    assert standin.kind_of("linguistic_mappings/made_up_json") == "generative"
    generic = standin.make_task("made_up_task")["examples"]
    assert len(generic) == standin.N_EXAMPLES and all(e["target_scores"] for e in generic)


def test_data_fetch_from_copies_an_sdist_into_the_cache_and_refuses_a_tarball_without_tasks(tmp_path):
    """What a user does now that PyPI no longer serves the sdist: `data fetch --from COPY`; later
    commands then read the cache without LORAHUB_BIGBENCH. A tarball with no task.json is refused."""
    import subprocess
    import sys

    tarball = _sdist(standin.write_standin(tmp_path / "tasks", SOME), tmp_path / "copy.tar.gz")
    env = {k: v for k, v in os.environ.items() if k != bigbench.SOURCE_ENV}
    env["LORAHUB_HOME"] = str(tmp_path / "home")
    cli = [sys.executable, "-m", "lorahub_serve.cli"]

    def run(*args):
        return subprocess.run([*cli, *args], env=env, capture_output=True, text=True, check=False)

    out = run("data", "fetch", "--from", str(tarball))
    assert out.returncode == 0, out.stderr
    assert f"{len(SOME)} BIG-bench tasks" in out.stdout
    assert (tmp_path / "home" / "downloads" / "bigbench" / bigbench.SDIST_FILE).is_file()
    listed = run("data", "list")
    assert listed.returncode == 0 and "linguistic_mappings/plural_json" in listed.stdout

    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz") as tf:
        tf.addfile(tarfile.TarInfo("bigbench-0.0.1/README.md"), io.BytesIO(b""))
    bad = run("data", "fetch", "--from", str(empty))
    assert bad.returncode == 2 and "not a BIG-bench sdist" in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_every_report_says_when_its_figures_come_from_the_stand_in(source, tmp_path):
    """run_metadata (written into every eval report and benchmark) labels stand-in data as such,
    and a real copy given by LORAHUB_BIGBENCH by its path alone."""
    from lorahub_serve.run_metadata import metadata

    source(standin.write_standin(tmp_path / "standin", SOME))
    assert metadata()["task_data"].endswith("(generated stand-in, not BIG-bench)")
    real = tmp_path / "real" / "navigate" / "task.json"
    real.parent.mkdir(parents=True)
    real.write_text('{"examples": [{"input": "x", "target_scores": {"True": 1, "False": 0}}]}')
    source(tmp_path / "real")
    assert metadata()["task_data"] == str(tmp_path / "real")


def test_commands_that_make_modules_or_figures_warn_on_the_stand_in(source, tmp_path, capsys):
    source(standin.write_standin(tmp_path / "standin", SOME))
    assert standin.warn_if_active("hub build")
    assert "[hub build] warning:" in capsys.readouterr().err
    real = tmp_path / "real" / "navigate" / "task.json"
    real.parent.mkdir(parents=True)
    real.write_text('{"examples": [{"input": "x", "target_scores": {"True": 1, "False": 0}}]}')
    source(tmp_path / "real")
    assert not standin.warn_if_active("hub build") and capsys.readouterr().err == ""
