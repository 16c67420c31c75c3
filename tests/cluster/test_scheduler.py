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


N = 9  # hub modules; a task choosing by loss scores them all alone, then searches its K = 5 lowest
HUB_CENTRES = {f"s{i}": np.sin(np.arange(N) * (i + 1)) * 0.8 for i in range(3)}


def _hub_loss(task, module_idx, w):
    """Loss of the composition Σ w_j e_(module_idx_j) in the hub's N dimensions (repeats add up)."""
    v = np.zeros(N)
    np.add.at(v, np.asarray(module_idx), np.asarray(w, dtype=np.float64))
    return float(np.sum((v - HUB_CENTRES[task]) ** 2))


def _selecting_runs():
    ex = tuple(from_records([{"input": "q", "output": " a"}]))
    return [TaskRun(n, ex, "digest", np.empty(0, dtype=np.int64), SearchState(K, CONFIG), status="selecting",
                    hub_size=N) for n in HUB_CENTRES]


def _drain_hub(sched, limit, loss=_hub_loss):
    """Run to the end in order; returns every (task, module row, weights) evaluated and the events."""
    rows, events = [], []
    while sched.active():
        work = sched.take(limit)
        if work.kind == "compose":
            sched.mark_done(work.task)
            continue
        b = work.batch
        rows += list(zip(b.tasks, b.module_idx, b.weights))
        events += [e for e, _ in sched.complete(work, np.array([loss(*r) for r in zip(b.tasks, b.module_idx, b.weights)]))]
    return rows, events


@pytest.mark.parametrize("limit", [4, 13, 1000])
def test_selection_by_loss_chooses_the_lowest_and_then_searches_as_run_search(limit):
    from lorahub_serve.engine.selection import lowest_k

    sched = Scheduler(_selecting_runs())
    rows, events = _drain_hub(sched, limit)
    assert events.count("selected") == len(HUB_CENTRES)
    for name, run in sched.runs.items():
        singles = [_hub_loss(name, [m], [1.0]) for m in range(N)]
        idx = lowest_k(singles, K)
        ref = run_search(lambda W, idx=idx, name=name: np.array([_hub_loss(name, idx, w) for w in W]), K, CONFIG)
        assert run.status == "done" and list(run.module_idx) == idx
        assert run.state.history == ref.history and run.state.reused_evaluations == K
        assert run.selection["select_evaluations"] == N
        mine = [(m, w) for t, m, w in rows if t == name]
        assert len(mine) == N + CONFIG.budget - K  # each module alone once: the start batch reuses K
        alone = [int(m[np.flatnonzero(w)[0]]) for m, w in mine if np.count_nonzero(w) == 1 and w.max() == 1.0]
        assert sorted(alone) == list(range(N))


def test_a_task_whose_losses_alone_are_not_finite_fails_alone():
    def loss(task, module_idx, w):
        return float("nan") if task == "s1" else _hub_loss(task, module_idx, w)

    sched = Scheduler(_selecting_runs())
    _, events = _drain_hub(sched, 7, loss)
    assert "select_failed" in events
    assert sched.runs["s1"].status == "failed" and "finite" in sched.runs["s1"].error
    assert sched.runs["s0"].status == sched.runs["s2"].status == "done"
