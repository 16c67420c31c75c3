"""Shared by the cluster tests: four small tasks, one search config, result comparisons."""

import contextlib
import json

import numpy as np

from lorahub_serve.engine.search import SearchConfig
from lorahub_serve.testing import FEW_SHOT

_FEW = list(FEW_SHOT)
# Distinct example sets, so every task has its own losses.
TASKS = {
    "alpha": _FEW[0:3],
    "beta": _FEW[1:4],
    "gamma": _FEW[2:5],
    "delta": [_FEW[0], _FEW[4]],
}
CONFIG = SearchConfig(budget=24, seed=3)  # K = 4 (the tiny hub): start 5, then generations of 4
LOSS_TOL = 1e-5  # per-candidate losses move by ~1e-7 with the batch they share (fp32 GEMM order)
TOO_LONG = [{"input": "x " * 400, "output": " no"}]  # 800 tokens > the tiny model's 512


def task_pairs(names=None):
    return [(n, TASKS[n]) for n in (names or TASKS)]


def assert_same_results(results: dict, reference: dict, names=None) -> None:
    """Same search trajectory (weights exactly: CMA-ES ranks candidates) and losses to fp32 noise."""
    for name in names or reference:
        got, ref = results[name], reference[name]
        assert got.evaluations == ref.evaluations, name
        np.testing.assert_array_equal(got.weights, ref.weights, err_msg=name)
        assert abs(got.best_loss - ref.best_loss) < LOSS_TOL, (name, got.best_loss, ref.best_loss)
        np.testing.assert_allclose(got.history, ref.history, rtol=0, atol=LOSS_TOL, err_msg=name)


def assert_store_like_reference(store, reference: dict, names=None) -> None:
    """Each STORE/<name> holds what `adapt` writes: same files, same metadata, same tensors."""
    from safetensors.torch import load_file

    for name in names or reference:
        ours, theirs = store / name, reference[name].out_dir
        assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
        ca, cb = (json.loads((d / "adapter_config.json").read_text()) for d in (ours, theirs))
        # PEFT keeps target_modules as a set: its order in the JSON varies between processes
        assert sorted(ca.pop("target_modules")) == sorted(cb.pop("target_modules")) and ca == cb, name
        a, b = json.loads((ours / "lorahub.json").read_text()), json.loads((theirs / "lorahub.json").read_text())
        assert set(a) == set(b), name
        for key in ("task", "base_model", "base_model_sha256", "rule", "modules", "weights", "seed",
                    "budget", "optimizer", "search", "evaluations"):
            assert a[key] == b[key], (name, key)
        ta, tb = load_file(ours / "adapter_model.safetensors"), load_file(theirs / "adapter_model.safetensors")
        assert set(ta) == set(tb)
        for k in ta:
            assert ta[k].equal(tb[k]), (name, k)


def resume_and_check(run, store, done, reference) -> dict:
    """Run an interrupted job again (`run(callback=...)` -> report) and check the resume: the
    `done` tasks were neither searched nor rewritten, the others resumed mid-search and end with
    the reference results, and the store is complete. Returns the report."""
    mtimes = {n: (store / n / "lorahub.json").stat().st_mtime_ns for n in done}
    events = []
    report = run(callback=lambda e, d: events.append((e, d)))
    first_gen = {}
    for e, d in events:
        if e == "generation":
            first_gen.setdefault(d["task"], d["evaluations"])
    assert set(first_gen) == set(TASKS) - set(done), (first_gen, done)  # finished tasks were not searched again
    assert all(n > CONFIG.population(4) for n in first_gen.values())  # the others resumed mid-search
    assert {n: (store / n / "lorahub.json").stat().st_mtime_ns for n in done} == mtimes
    assert sorted(n for n, t in report["tasks"].items() if t["status"] == "done-earlier") == sorted(done)
    assert_same_results(report["results"], reference, names=set(TASKS) - set(done))
    assert_store_like_reference(store, reference)
    return report


@contextlib.contextmanager
def one_thread():
    """Tiny models gain nothing from 2 threads, and lose a lot on a loaded 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
