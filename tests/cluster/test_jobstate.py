"""Job journal: atomic per-task records, digest checks, the lock, optimisers that cannot pickle."""

import pickle

import numpy as np
import pytest

from lorahub_serve.cluster.jobstate import JobJournal, JobLockedError, job_id, restore_state
from lorahub_serve.cluster.scheduler import TaskRun
from lorahub_serve.engine.search import SearchConfig, SearchState


def _run(config, status="running"):
    state = SearchState(3, config)
    cands = state.ask()
    state.tell(cands, np.arange(len(cands), dtype=float))
    return TaskRun("t", (), "d1", np.array([2, 0, 1]), state, seconds=1.5, status=status)


def test_job_id_ignores_tasks_and_actors_but_not_the_search(tmp_path):
    (tmp_path / "hub.json").write_text("{}")
    a, key = job_id("m", tmp_path, SearchConfig(seed=1), 4, "lorahub")
    assert a == job_id("m", tmp_path, SearchConfig(seed=1), 4, "lorahub")[0]
    assert a != job_id("m", tmp_path, SearchConfig(seed=2), 4, "lorahub")[0]
    assert a != job_id("m", tmp_path, SearchConfig(seed=1), 4, "linear")[0]
    assert key["search"]["seed"] == 1 and len(a) == 16


def test_save_load_resumes_the_optimiser(tmp_path):
    config = SearchConfig(budget=20, seed=5)
    run = _run(config)
    j = JobJournal(tmp_path / "job", {"k": 1})
    j.save(run)
    assert j.load("t", "other digest") is None  # examples changed: start over
    rec = j.load("t", "d1")
    assert rec["evaluations"] == run.state.evaluations and rec["seconds"] == 1.5
    state = restore_state(rec, 3, config)
    np.testing.assert_array_equal([c.value for c in state.ask()], [c.value for c in run.state.ask()])
    assert not list((tmp_path / "job" / "tasks").glob(".*"))  # no temporary files left behind
    j.close()


def test_unpicklable_optimiser_restarts_the_task(tmp_path):
    config = SearchConfig(budget=6, seed=5, optimizer="ngopt")
    j = JobJournal(tmp_path / "job", {})
    j.save(_run(config))
    rec = j.load("t", "d1")
    assert rec["state"] is None
    assert restore_state(rec, 3, config).evaluations == 0
    finished = _run(config, status="done")
    j.save(finished)
    restored = restore_state(j.load("t", "d1"), 3, config)  # finished: the summary is enough
    assert restored.evaluations == finished.state.evaluations
    np.testing.assert_array_equal(restored.best_weights, finished.state.best_weights)
    j.close()


def test_lock_refuses_a_second_live_run(tmp_path):
    j = JobJournal(tmp_path / "job", {})
    with pytest.raises(JobLockedError, match="in use by another run"):
        JobJournal(tmp_path / "job", {})
    j.close()
    JobJournal(tmp_path / "job", {}).close()


def test_corrupt_record_is_ignored(tmp_path):
    j = JobJournal(tmp_path / "job", {})
    (tmp_path / "job" / "tasks" / "t.pkl").write_bytes(b"not a pickle")
    assert j.load("t", "d1") is None
    (tmp_path / "job" / "tasks" / "t.pkl").write_bytes(pickle.dumps({"format": 0}))
    assert j.load("t", "d1") is None
    j.close()
