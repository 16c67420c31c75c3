"""Scheduler without models or Ray: any split and any completion order gives run_search's result."""

import pickle
import random

import numpy as np
import pytest

from lorahub_serve.cluster.scheduler import Scheduler, TaskRun
from lorahub_serve.data import from_records
from lorahub_serve.engine.search import SearchConfig, SearchState, run_search

K = 5
CONFIG = SearchConfig(budget=30, seed=7, popsize=8)  # start 6 (w=0, 5 one-hots), then 8, 8, 8
CENTRES = {f"t{i}": np.linspace(-1, 1, K) * (i + 1) / 4 for i in range(4)}


def _loss(task, w):
    """A deterministic per-candidate loss, different for every task."""
    return float(np.sum((np.asarray(w) - CENTRES[task]) ** 2))


def _runs(names=CENTRES):
    ex = tuple(from_records([{"input": "q", "output": " a"}]))
    return [TaskRun(n, ex, "digest", np.arange(K), SearchState(K, CONFIG)) for n in names]


def _losses(work):
    return np.array([_loss(t, w) for t, w in zip(work.batch.tasks, work.batch.weights)])


def _reference(task):
    return run_search(lambda W: np.array([_loss(task, w) for w in W]), K, CONFIG)


def _drain(sched, limit, rng=None, in_flight_max=3):
    """Run the scheduler to the end, completing Work out of order when `rng` is given."""
    in_flight, composed = [], []
    while sched.active():
        while len(in_flight) < in_flight_max and (work := sched.take(limit)) is not None:
            in_flight.append(work)
        work = in_flight.pop(rng.randrange(len(in_flight)) if rng else 0)
        if work.kind == "compose":
            composed.append(work.task)
            sched.mark_done(work.task)
        else:
            sched.complete(work, _losses(work))
    return composed


@pytest.mark.parametrize("limit", [1, 3, 8, 13, 1000])
@pytest.mark.parametrize("shuffle", [False, True])
def test_any_split_equals_run_search(limit, shuffle):
    sched = Scheduler(_runs())
    composed = _drain(sched, limit, random.Random(limit) if shuffle else None)
    assert sorted(composed) == sorted(CENTRES)
    for name, run in sched.runs.items():
        ref = _reference(name)
        assert run.status == "done" and run.state.evaluations == CONFIG.budget
        np.testing.assert_array_equal(run.state.best_weights, ref.best_weights)
        assert run.state.history == ref.history


def test_batches_mix_tasks():
    sched = Scheduler(_runs())
    work = sched.take(100)
    assert len(set(work.batch.tasks)) == 4 and work.batch.size == 4 * CONFIG.start_size(K)
    assert set(work.batch.examples) == set(CENTRES)


def test_checkpoint_between_tell_and_ask_resumes_exactly():
    saved = {}

    def checkpoint(run):
        assert not run.cands  # nothing asked and untold: the pickle resumes exactly
        saved[run.name] = pickle.dumps(run.state)

    sched = Scheduler(_runs(), checkpoint=checkpoint)
    for _ in range(2):  # two generations of every task
        sched.complete(work := sched.take(1000), _losses(work))
    resumed = [TaskRun(n, r.examples, r.digest, r.module_idx, pickle.loads(saved[n]))
               for n, r in sched.runs.items()]
    assert all(r.state.evaluations == CONFIG.start_size(K) + CONFIG.population(K) for r in resumed)
    sched2 = Scheduler(resumed)
    _drain(sched2, 5)
    for name, run in sched2.runs.items():
        np.testing.assert_array_equal(run.state.best_weights, _reference(name).best_weights)


def test_lost_work_requeued_gives_same_result():
    sched = Scheduler(_runs())
    lost = sched.take(10)
    sched.requeue(lost)  # the worker died: its candidates go back to the front
    again = sched.take(10)
    assert again.items == lost.items
    sched.complete(again, _losses(again))
    _drain(sched, 10)
    for name, run in sched.runs.items():
        np.testing.assert_array_equal(run.state.best_weights, _reference(name).best_weights)


def test_failed_task_alone_and_stale_results_ignored():
    sched = Scheduler(_runs())
    work = sched.take(1000)
    sched.fail("t1", "bad examples")
    assert all(t != "t1" for t, _, _ in sched.queue)
    sched.complete(work, _losses(work))  # t1's losses arrive after its failure: ignored
    sched.complete(work, _losses(work))  # a duplicate delivery: ignored
    _drain(sched, 1000)
    assert sched.runs["t1"].status == "failed" and sched.runs["t1"].error == "bad examples"
    for name in ("t0", "t2", "t3"):
        np.testing.assert_array_equal(sched.runs[name].state.best_weights, _reference(name).best_weights)


def test_isolate_splits_a_batch_by_task():
    sched = Scheduler(_runs())
    work = sched.take(14)  # the start batches: t0's 6, t1's 6, t2's 2
    sched.isolate(work)
    parts = [sched.take(1000) for _ in range(3)]
    assert [p.tasks for p in parts] == [["t0"], ["t1"], ["t2"]]
    assert sum(p.batch.size for p in parts) == 14


def test_no_export_marks_done_without_compose():
    sched = Scheduler(_runs(["t0"]), export=False)
    assert _drain(sched, 1000) == []
    assert sched.runs["t0"].status == "done"
