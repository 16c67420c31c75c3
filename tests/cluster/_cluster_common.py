"""Shared by the cluster tests: four small tasks, one search config, result comparisons, and a
killer of actor processes that are still starting."""

import contextlib
import json
import os
import re
import signal
import threading
import time

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
# --select loss with K < N: each task scores the tiny hub's 4 modules alone, then searches its 2 lowest
LOSS_CONFIG, LOSS_K = SearchConfig(budget=16, seed=3, select="loss"), 2
LOSS_TOL = 1e-5  # per-candidate losses move by ~1e-7 with the batch they share (fp32 GEMM order)
TOO_LONG = [{"input": "x " * 400, "output": " no"}]  # 800 tokens > the tiny model's 512


class TaskEvaluationCounter:
    """Records every (task, row) the engine's real evaluator scores (it still scores them)."""

    def __init__(self, engine):
        self.rows: list[tuple[str, np.ndarray, np.ndarray]] = []  # (task, hub indices [K], weights [K])
        real = engine.evaluator.losses

        def losses(tasks, module_idx, weights):
            self.rows += list(zip(tasks, np.array(module_idx), np.array(weights, dtype=np.float64)))
            return real(tasks, module_idx, weights)

        engine.evaluator.losses = losses

    def alone(self) -> dict[tuple[str, int], int]:
        """(task, hub index) -> rows that scored that module alone at weight 1 for that task."""
        counts: dict[tuple[str, int], int] = {}
        for task, idx, w in self.rows:
            on = np.flatnonzero(w)
            if len(on) == 1 and w[on[0]] == 1.0:
                key = (task, int(idx[on[0]]))
                counts[key] = counts.get(key, 0) + 1
        return counts


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


class StartupKiller:
    """SIGKILL the first Ray actor process of class `cls` seen inside its constructor, as the
    OOM killer (or a lost node) would while the actor loads. Only descendants of this process
    are looked at (the local cluster's workers), never another test's Ray.

    A thread polls the process titles Ray sets (`ray::[<actor name>:]<cls>.__init__` until the
    constructor returns). `killed`: that process's pid, None if none was seen within `deadline_s`.
    """

    def __init__(self, cls: str, deadline_s: float = 120.0, poll_s: float = 0.02):
        self.title = re.compile(rf"ray::(?:[^:\s]+:)?{re.escape(cls)}\.__init__\b")
        self.deadline_s, self.poll_s = deadline_s, poll_s
        self.killed: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._hunt, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _hunt(self) -> None:
        import psutil

        me, deadline = psutil.Process(), time.monotonic() + self.deadline_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            for proc in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if self.title.match((proc.cmdline() or [""])[0]):
                        os.kill(proc.pid, signal.SIGKILL)
                        self.killed = proc.pid
                        return
            time.sleep(self.poll_s)
