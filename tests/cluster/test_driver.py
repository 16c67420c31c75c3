"""run_adapt_batch in this process (actors=0, no Ray): results, store, resume, bad tasks, CLI."""

import json

import pytest
import torch
from _cluster_common import (
    CONFIG,
    LOSS_CONFIG,
    LOSS_K,
    TASKS,
    TOO_LONG,
    TaskEvaluationCounter,
    assert_same_results,
    assert_store_like_reference,
    resume_and_check,
    task_pairs,
)

from lorahub_serve.cli import main
from lorahub_serve.cluster import run_adapt_batch


class Crash(Exception):
    """Stands in for the driver dying."""


def _run(model, hub, store, tasks=None, **kw):
    kw.setdefault("config", CONFIG)
    return run_adapt_batch(str(model), hub, tasks or task_pairs(), store, actors=0,
                           progress=False, **kw)


def test_equals_single_process_adapt(tiny_llama_dir, tiny_llama_hub, reference, tmp_path):
    report = _run(tiny_llama_dir, tiny_llama_hub, tmp_path / "store", max_batch=5)
    assert report["done"] == 4 and report["failed"] == 0
    assert report["evaluations"] == 4 * CONFIG.budget
    assert_same_results(report["results"], reference)
    assert_store_like_reference(tmp_path / "store", reference)
    saved = json.loads((tmp_path / "store" / ".jobs").glob("*/report.json").__next__().read_text())
    assert saved["tasks"]["alpha"]["status"] == "done" and "results" not in saved


def test_select_loss_picks_what_adapt_picks_scoring_each_module_alone_once(
        tiny_llama_dir, tiny_llama_hub, loss_reference, tmp_path):
    from lorahub_serve.engine.adapt import Engine

    engine = Engine(str(tiny_llama_dir), tiny_llama_hub)
    counter = TaskEvaluationCounter(engine)
    try:  # max_batch 5: selection rows of several tasks share batches, and with search rows
        report = _run(tiny_llama_dir, tiny_llama_hub, tmp_path / "store", config=LOSS_CONFIG,
                      modules=LOSS_K, engine=engine, max_batch=5)
    finally:
        engine.close()
    assert report["done"] == 4
    for name, ref in loss_reference.items():
        assert report["results"][name].module_idx == ref.module_idx, name
        assert ref.extra["select_evaluations"] == 4 and len(ref.module_idx) == LOSS_K
    random_idx = engine.module_indices(LOSS_K, LOSS_CONFIG.seed)
    assert all(r.module_idx != random_idx for r in loss_reference.values())  # a choice random would not make
    assert_same_results(report["results"], loss_reference)
    assert_store_like_reference(tmp_path / "store", loss_reference)
    assert counter.alone() == {(t, m): 1 for t in TASKS for m in range(4)}  # selection and search together
    assert len(counter.rows) == 4 * (4 + LOSS_CONFIG.budget - LOSS_K)
    meta = json.loads((tmp_path / "store" / "alpha" / "lorahub.json").read_text())
    assert meta["select"] == "loss" and meta["reused_evaluations"] == LOSS_K
    assert 0 < meta["select_seconds"] < meta["seconds"] and meta["search_seconds"] > 0


def test_select_loss_resumes_with_the_modules_it_chose(tiny_llama_dir, tiny_llama_hub, loss_reference, tmp_path):
    store = tmp_path / "store"

    def crash_mid_search(event, data):
        if event == "generation" and data["evaluations"] > LOSS_CONFIG.start_size(LOSS_K):
            raise Crash

    kw = {"config": LOSS_CONFIG, "modules": LOSS_K, "max_batch": 3}
    with pytest.raises(Crash):
        _run(tiny_llama_dir, tiny_llama_hub, store, callback=crash_mid_search, **kw)
    events = []
    report = _run(tiny_llama_dir, tiny_llama_hub, store, callback=lambda e, d: events.append(e), **kw)
    assert report["done"] == 4
    assert events.count("task_selected") < 4  # the task that crashed mid-search was not scored again
    assert_same_results(report["results"], loss_reference)
    assert_store_like_reference(store, loss_reference)


def test_resume_after_a_crash_redoes_nothing(tiny_llama_dir, tiny_llama_hub, reference, tmp_path):
    store = tmp_path / "store"
    done = []

    def crash_after_two(event, data):
        if event == "task_done":
            done.append(data["task"])
            if len(done) == 2:
                raise Crash

    # max_batch 4 = one population generation: two tasks finish while two are mid-search
    with pytest.raises(Crash):
        _run(tiny_llama_dir, tiny_llama_hub, store, max_batch=4, callback=crash_after_two)
    assert not (store / "gamma").exists()

    report = resume_and_check(lambda **kw: _run(tiny_llama_dir, tiny_llama_hub, store, **kw), store, done,
                              reference)
    assert [report["tasks"][n]["status"] for n in done] == ["done-earlier"] * 2
    assert report["done"] == 2 and report["evaluations"] < 2 * CONFIG.budget

    again = _run(tiny_llama_dir, tiny_llama_hub, store)  # a third run has nothing to do
    assert again["done-earlier"] == 4 and again["evaluations"] == 0


def test_missing_output_is_exported_again_without_search(tiny_llama_dir, tiny_llama_hub, reference, tmp_path):
    import shutil

    store = tmp_path / "store"
    _run(tiny_llama_dir, tiny_llama_hub, store, tasks=task_pairs(["beta"]))
    shutil.rmtree(store / "beta")
    report = _run(tiny_llama_dir, tiny_llama_hub, store, tasks=task_pairs(["beta"]))
    assert report["tasks"]["beta"]["status"] == "done" and report["evaluations"] == 0
    assert_store_like_reference(store, reference, names=["beta"])


def test_bad_tasks_fail_alone(tiny_llama_dir, tiny_llama_hub, reference, tmp_path):
    tasks = task_pairs(["alpha", "delta"]) + [("long", TOO_LONG), ("broken", [{"input": "q"}])]
    report = _run(tiny_llama_dir, tiny_llama_hub, tmp_path / "store", tasks=tasks)
    assert report["done"] == 2 and report["failed"] == 2
    assert "exceeds the model's context" in report["tasks"]["long"]["error"]
    assert "missing field 'output'" in report["tasks"]["broken"]["error"]
    assert not (tmp_path / "store" / "long").exists()
    assert_same_results(report["results"], reference, names=["alpha", "delta"])


def test_cli_adapt_batch(tiny_llama_dir, tiny_llama_hub, reference, tmp_path, capsys):
    (tmp_path / "ex").mkdir()
    (tmp_path / "ex" / "gamma.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TASKS["gamma"]))
    lines = [{"name": "alpha", "examples": TASKS["alpha"]}, {"name": "gamma", "examples_path": "ex/gamma.jsonl"},
             {"name": "bad", "examples_path": "ex/missing.jsonl"}]
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(x) + "\n" for x in lines))
    args = ["adapt-batch", str(tasks), "--hub", str(tiny_llama_hub), "--out", str(tmp_path / "store"),
            "--model", str(tiny_llama_dir), "--actors", "0", "--budget", str(CONFIG.budget),
            "--seed", str(CONFIG.seed), "--no-progress"]
    assert main(args) == 1  # one task failed
    out = capsys.readouterr().out
    assert "alpha\tdone" in out and "bad\tfailed" in out and "2 done" in out
    assert_store_like_reference(tmp_path / "store", reference, names=["alpha", "gamma"])
    tasks.write_text("{oops\n")
    assert main(args) == 2
    assert "tasks.jsonl:1: invalid JSON" in capsys.readouterr().err


def test_contrast_searches_the_same_objective_as_adapt(tiny_llama_dir, tiny_llama_hub, tmp_path):
    """The option term travels with the batch: adapt-batch with contrast = adapt with contrast."""
    from dataclasses import replace

    from _cluster_common import LOSS_TOL

    from lorahub_serve.data.examples import Example
    from lorahub_serve.engine.adapt import Engine

    labeled = {n: [Example(f"Q: is the {w} {c}?\nA:", f" {a}", ("yes", "no"), "text")
                   for w, a in (("cat", "no"), ("dog", "yes"), ("sky", "yes"), ("cat", "yes"))]
               for n, c in (("blue", "blue"), ("red", "red"))}
    config = replace(CONFIG, contrast=1.0)
    engine = Engine(str(tiny_llama_dir), tiny_llama_hub)
    try:
        want = {n: engine.adapt(ex, task=n, config=config, progress=False) for n, ex in labeled.items()}
        plain = engine.adapt(labeled["blue"], task="plain", config=CONFIG, progress=False)
    finally:
        engine.close()
    report = _run(tiny_llama_dir, tiny_llama_hub, tmp_path / "store", tasks=list(labeled.items()),
                  config=config)
    assert report["done"] == 2
    for n in labeled:
        got = report["results"][n]
        assert abs(got.best_loss - want[n].best_loss) < LOSS_TOL, n
        assert got.weights.tolist() == want[n].weights.tolist(), n
    assert abs(want["blue"].best_loss - plain.best_loss) > 1e-3  # the term changed the objective


def test_export_rule_reaches_the_store_and_a_new_rule_re_exports(tiny_llama_dir, tiny_llama_hub, tmp_path):
    """adapt-batch --export-rule ties: each adapter is PEFT's ties merge of the weights found,
    the same tensors a single-process export writes; a mixed-rank choice fails before any search;
    the same job asked for another rule re-exports without searching again."""
    from safetensors.torch import load_file

    from lorahub_serve.engine.adapt import Engine
    from lorahub_serve.engine.hub import read_manifest
    from lorahub_serve.engine.merge import MergeSpec

    mods = read_manifest(tiny_llama_hub)
    assert len({m.rank for m in mods}) > 1  # the fixture mixes ranks
    with pytest.raises(ValueError, match="rank"):
        _run(tiny_llama_dir, tiny_llama_hub, tmp_path / "mixed", tasks=task_pairs(["alpha"]), export_rule="ties")
    assert not (tmp_path / "mixed").exists()
    same = [m.name for m in mods if m.rank == mods[0].rank]  # PEFT's merges take modules of one rank
    spec, store = MergeSpec("ties", density=0.5), tmp_path / "store"
    report = _run(tiny_llama_dir, tiny_llama_hub, store, tasks=task_pairs(["alpha"]), modules=same, export_rule=spec)
    assert report["done"] == 1
    meta = json.loads((store / "alpha" / "lorahub.json").read_text())
    assert (meta["rule"], meta["density"], meta["search_rule"]) == ("ties", 0.5, "lorahub")
    engine = Engine(str(tiny_llama_dir), tiny_llama_hub)
    try:
        engine.export(report["results"]["alpha"], tmp_path / "ref", export_rule=spec)
    finally:
        engine.close()
    got, want = (load_file(d / "adapter_model.safetensors") for d in (store / "alpha", tmp_path / "ref"))
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    again = _run(tiny_llama_dir, tiny_llama_hub, store, tasks=task_pairs(["alpha"]), modules=same)
    assert again["tasks"]["alpha"]["status"] == "done" and again["evaluations"] == 0
    assert json.loads((store / "alpha" / "lorahub.json").read_text())["rule"] == "lorahub"


def test_cli_adapt_batch_names_a_bad_density(tiny_llama_hub, tmp_path, capsys):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"name": "alpha", "examples": TASKS["alpha"]}) + "\n")
    args = ["adapt-batch", str(tasks), "--hub", str(tiny_llama_hub), "--out", str(tmp_path / "store"),
            "--actors", "0", "--export-rule", "ties", "--density", "1.5", "--no-progress"]
    assert main(args) == 2
    assert "density" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()
