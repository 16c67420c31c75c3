"""BatchWorker without Ray: registration, shared batches, split-independence, bad tasks, compose.

Losses and composed factors are checked against an oracle built from the hub's PEFT files alone:
the dense ΔW of the composition, added to a plain Hugging Face copy of the base model.
"""

import json
import pickle

import numpy as np
import pytest
import torch
from _cluster_common import LOSS_TOL, TASKS, TOO_LONG
from safetensors.torch import load_file

from lorahub_serve.cluster.worker import BadTaskError, Batch, BatchWorker, examples_digest
from lorahub_serve.data import from_records
from lorahub_serve.models import load_base
from lorahub_serve.testing import reference_loss

ORACLE_TOL = 1e-4  # fp32 engine vs the fp32 model with ΔW added to its weights (tests/engine/test_equivalence.py)


@pytest.fixture(scope="module")
def worker(tiny_llama_dir, tiny_llama_hub):
    w = BatchWorker(str(tiny_llama_dir), tiny_llama_hub)
    yield w
    w.close()


def _examples(*names):
    return {n: tuple(from_records(TASKS[n])) for n in names}


def _dense_deltas(hub, names, weights, rule="lorahub"):
    """layer -> ΔW [d_out, d_in] (float64) of modules `names` weighted by `weights`, read from
    their PEFT folders: lorahub ΔW = (Σ w·s·B)(Σ w·A), ranks zero-padded to the largest;
    linear ΔW = Σ w·s·B·A. s = lora_alpha / r."""
    paths = {m["name"]: hub / m["path"] for m in json.loads((hub / "hub.json").read_text())["modules"]}
    mods = []
    for name in names:
        cfg = json.loads((paths[name] / "adapter_config.json").read_text())
        assert not cfg.get("use_rslora")
        factors = {}
        for key, t in load_file(paths[name] / "adapter_model.safetensors").items():
            layer, which = key.removeprefix("base_model.model.").rsplit(".lora_", 1)  # "...q_proj", "A.weight"
            factors.setdefault(layer, {})[which[0]] = t.double()
        mods.append((factors, cfg["lora_alpha"] / cfg["r"]))
    deltas = {}
    for layer in mods[0][0]:
        pairs = [(f[layer]["A"], f[layer]["B"] * s) for f, s in mods]
        if rule == "lorahub":
            r = max(a.shape[0] for a, _ in pairs)
            a = sum(w * torch.nn.functional.pad(a, (0, 0, 0, r - a.shape[0])) for w, (a, _) in zip(weights, pairs))
            b = sum(w * torch.nn.functional.pad(b, (0, r - b.shape[1])) for w, (_, b) in zip(weights, pairs))
            deltas[layer] = b @ a
        else:
            deltas[layer] = sum(w * b @ a for w, (a, b) in zip(weights, pairs))
    return deltas


def _oracle_loss(net, tok, examples, deltas):
    """HF's own loss of `net` with `deltas` added to its weights (restored afterwards)."""
    saved = {layer: net.get_submodule(layer).weight.detach().clone() for layer in deltas}
    try:
        with torch.no_grad():
            for layer, d in deltas.items():
                net.get_submodule(layer).weight += d.to(saved[layer].dtype)
        return reference_loss(net, tok, examples)
    finally:
        with torch.no_grad():
            for layer, w in saved.items():
                net.get_submodule(layer).weight.copy_(w)


def _hub_names(worker):
    return [n for n, _ in worker.info()["hub_modules"]]


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


def test_evaluate_matches_the_dense_delta_w_oracle(worker, tiny_llama_dir, tiny_llama_hub):
    """Each candidate of a mixed-task batch (modules in its own order, one of them zero) has the
    loss of the base model with that candidate's ΔW added to its weights."""
    tasks = ["alpha", "beta", "gamma", "alpha", "delta", "beta"]
    rng = np.random.default_rng(7)
    idx = np.stack([rng.permutation(4) for _ in tasks])
    weights = rng.uniform(-1.5, 1.5, size=idx.shape)
    weights[3] = 0.0  # the zero composition: the base model's loss
    got = worker.evaluate(Batch(tuple(tasks), idx, weights, _examples(*set(tasks))))
    assert got.shape == (6,)
    net, tok = load_base(tiny_llama_dir)
    names = _hub_names(worker)
    base = {t: reference_loss(net, tok, TASKS[t]) for t in set(tasks)}
    for c, task in enumerate(tasks):
        deltas = _dense_deltas(tiny_llama_hub, [names[i] for i in idx[c]], weights[c])
        want = _oracle_loss(net, tok, TASKS[task], deltas)
        assert abs(got[c] - want) < ORACLE_TOL, f"candidate {c} ({task}): worker {got[c]:.6f} vs ΔW oracle {want:.6f}"
        if c != 3:  # the composition moved the loss, so the match says something
            assert abs(want - base[task]) > 1e-3, (c, want, base[task])
    assert abs(got[3] - base["alpha"]) < ORACLE_TOL


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


def test_compose_gives_the_dense_delta_w(worker, tiny_llama_hub):
    """The composed factors, as `adapt` exports them, multiply out to the ΔW the module files give;
    the rank is the largest chosen one (the hub mixes ranks 2 and 4)."""
    names = _hub_names(worker)
    ranks = {m["name"]: m["rank"] for m in json.loads((tiny_llama_hub / "hub.json").read_text())["modules"]}
    for order, w in (([3, 0, 2, 1], [0.5, -1.0, 0.25, 1.5]), ([2, 0], [1.25, -0.75])):
        got = worker.compose(order, np.array(w))
        want = _dense_deltas(tiny_llama_hub, [names[i] for i in order], w)
        assert set(got) == set(want)
        for layer, (a, b) in got.items():
            assert a.device.type == b.device.type == "cpu"
            r = max(ranks[names[i]] for i in order)
            assert a.shape == (r, want[layer].shape[1]) and b.shape == (want[layer].shape[0], r), (layer, r)
            dense = b.double() @ a.double()
            scale = want[layer].abs().max().item()
            assert scale > 1e-3  # not a vacuous zero
            torch.testing.assert_close(dense, want[layer], rtol=0, atol=1e-5 * scale)


def test_info_lists_the_hub(worker):
    info = worker.info()
    assert [n for n, _ in info["hub_modules"]] == [m.name for m in worker.engine.hub_modules]
    assert info["fingerprint"] and info["pid"] > 0


def test_examples_digest_tracks_content():
    a = from_records(TASKS["alpha"])
    assert examples_digest(a) == examples_digest(list(a))
    assert examples_digest(a) != examples_digest(a[:2])
