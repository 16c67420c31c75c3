"""BatchWorker without Ray: registration, shared batches, split-independence, bad tasks, compose."""

import pickle

import numpy as np
import pytest
from _cluster_common import LOSS_TOL, TASKS, TOO_LONG

from lorahub_serve.cluster.worker import BadTaskError, Batch, BatchWorker, examples_digest
from lorahub_serve.data import from_records
from lorahub_serve.engine.export import compose_factors


@pytest.fixture(scope="module")
def worker(tiny_llama_dir, tiny_llama_hub):
    w = BatchWorker(str(tiny_llama_dir), tiny_llama_hub)
    yield w
    w.close()


def _examples(*names):
    return {n: tuple(from_records(TASKS[n])) for n in names}


def _batch(tasks, seed=0, k=4):
    rng = np.random.default_rng(seed)
    weights = rng.uniform(-1.5, 1.5, size=(len(tasks), k))
    idx = np.tile(np.arange(k), (len(tasks), 1))
    return Batch(tuple(tasks), idx, weights, _examples(*set(tasks)))


def test_batch_checks_shapes_and_examples():
    with pytest.raises(ValueError, match=r"must agree as \[C\], \[C, K\], \[C, K\]"):
        Batch(("alpha",), np.zeros((1, 4), dtype=np.int64), np.zeros((2, 4)), _examples("alpha"))
    with pytest.raises(ValueError, match="no examples for tasks"):
        Batch(("alpha", "beta"), np.zeros((2, 4), dtype=np.int64), np.zeros((2, 4)), _examples("alpha"))


def test_add_tasks_is_idempotent(worker):
    worker.add_tasks(_examples("alpha"))
    encoded = worker.engine.evaluator.tasks["alpha"]
    worker.add_tasks(_examples("alpha"))
    assert worker.engine.evaluator.tasks["alpha"] is encoded  # same examples: not encoded again
    other = {"alpha": tuple(from_records(TASKS["beta"]))}
    worker.add_tasks(other)  # same name, new examples: replaced
    assert worker.engine.evaluator.tasks["alpha"] is not encoded
    worker.add_tasks(_examples("alpha"))


def test_evaluate_equals_evaluator_losses(worker):
    batch = _batch(["alpha", "beta", "gamma", "alpha", "delta", "beta"])
    got = worker.evaluate(batch)
    want = worker.engine.evaluator.losses(list(batch.tasks), batch.module_idx, batch.weights)
    assert got.shape == (6,)
    np.testing.assert_array_equal(got, want)


def test_losses_do_not_depend_on_how_candidates_are_split(worker, tiny_llama_dir, tiny_llama_hub):
    """Each candidate's loss is the same (to fp32 rounding) alone, in any batch, at any budget."""
    batch = _batch(["alpha", "beta", "gamma", "delta"] * 4, seed=1)
    together = worker.evaluate(batch)
    alone = np.array([worker.evaluate(Batch(batch.tasks[i:i + 1], batch.module_idx[i:i + 1],
                                            batch.weights[i:i + 1], batch.examples))[0]
                      for i in range(batch.size)])
    small = BatchWorker(str(tiny_llama_dir), tiny_llama_hub, token_budget=48)  # many micro-batches
    try:
        packed_small = small.evaluate(batch)
    finally:
        small.close()
    for name, other in (("one at a time", alone), ("token budget 48", packed_small)):
        diff = np.abs(together - other)
        bad = np.flatnonzero(diff > LOSS_TOL)
        assert not bad.size, f"{name}: {bad.size} of {diff.size} losses differ, worst {diff.max():.2e} at {bad}"


def test_bad_task_is_named(worker):
    with pytest.raises(BadTaskError, match="exceeds the model's context") as info:
        worker.add_tasks({"long": tuple(from_records(TOO_LONG))})
    assert info.value.task == "long"
    again = pickle.loads(pickle.dumps(info.value))  # Ray ships it by pickle
    assert again.task == "long" and str(again) == str(info.value)


def test_compose_matches_export(worker):
    w = np.array([0.5, -1.0, 0.25, 1.5])
    got = worker.compose([3, 0, 2, 1], w)
    want = compose_factors(worker.engine.stack, [3, 0, 2, 1], w, "lorahub")
    assert set(got) == set(want)
    for k in want:
        assert got[k][0].equal(want[k][0]) and got[k][1].equal(want[k][1])


def test_info_lists_the_hub(worker):
    info = worker.info()
    assert [n for n, _ in info["hub_modules"]] == [m.name for m in worker.engine.hub_modules]
    assert info["fingerprint"] and info["pid"] > 0


def test_examples_digest_tracks_content():
    a = from_records(TASKS["alpha"])
    assert examples_digest(a) == examples_digest(list(a))
    assert examples_digest(a) != examples_digest(a[:2])
