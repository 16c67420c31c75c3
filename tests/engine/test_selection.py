"""Module selection (`adapt --select`): the pure rules on synthetic data, then on a tiny model
where one hub module was trained on the task itself and must be chosen."""

import json

import numpy as np
import pytest
import torch

from lorahub_serve import testing
from lorahub_serve.data.examples import from_records
from lorahub_serve.engine import selection
from lorahub_serve.engine.adapt import Engine
from lorahub_serve.engine.search import SearchConfig
from lorahub_serve.formats import ADAPTER_WEIGHTS, read_hub_json, write_hub_json
from lorahub_serve.hub.build import sha256_file
from lorahub_serve.hub.train import TrainConfig, train_lora
from lorahub_serve.models import load_base


def test_lowest_k_picks_the_planted_minima_best_first():
    rng = np.random.default_rng(0)
    losses = rng.uniform(2.0, 3.0, size=50)
    losses[[7, 31, 12]] = [0.5, 0.7, 0.9]
    assert selection.lowest_k(losses, 3) == [7, 31, 12]
    assert selection.lowest_k([1.0, 1.0, 0.5], 2) == [2, 0]  # ties keep hub order


@pytest.mark.parametrize("losses,k,needle", [([1.0, float("nan")], 1, "finite"),
                                              ([1.0, 2.0], 3, "1..2"), ([1.0], 0, "1..1")])
def test_lowest_k_refuses_bad_input(losses, k, needle):
    with pytest.raises(ValueError, match=needle):
        selection.lowest_k(losses, k)


def test_nearest_k_ranks_by_cosine_not_by_norm():
    c = np.array([[1.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.9, 0.1, 0.0], [-1.0, 0.0, 0.0]])
    assert selection.nearest_k(c, np.array([2.0, 0.0, 0.0]), 2) == [0, 2]
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        selection.nearest_k(c, np.ones(2), 1)


def test_select_mode_is_validated():
    with pytest.raises(ValueError, match="select must be one of random, loss, retrieve"):
        SearchConfig(select="best")


TASK = [{"input": f"count {w} ->", "output": " up up"} for w in ("alpha", "beta", "gamma", "delta", "kappa")]


@pytest.fixture(scope="module")
def hub_with_task_module(tiny_llama_dir, tmp_path_factory):
    """5 random modules + `trained`, fitted with gradients on TASK (its loss there is lowest)."""
    torch.manual_seed(0)
    net, tok = load_base(tiny_llama_dir)
    hub = testing.random_hub(net, tmp_path_factory.mktemp("sel") / "hub", n=5, ranks=(4,), scale=1.0)
    cfg = TrainConfig(rank=4, alpha=8, steps=30, batch_size=5, lr=1e-2, heldout=0, max_length=64)
    train_lora(net, tok, from_records(TASK), hub / "modules" / "trained", cfg)
    manifest = read_hub_json(hub)
    manifest["modules"].insert(2, {"name": "trained", "path": "modules/trained", "source_task": "trained",
                                   "rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"],
                                   "sha256": sha256_file(hub / "modules" / "trained" / ADAPTER_WEIGHTS)})
    write_hub_json(hub, manifest)
    return hub


def test_loss_selection_chooses_the_module_trained_on_the_task(tiny_llama_dir, hub_with_task_module, tmp_path):
    engine = Engine(str(tiny_llama_dir), hub_with_task_module, backend="torch", warmup=False)
    try:
        singles = {}
        for i, m in enumerate(engine.hub_modules):  # each module alone, one candidate at a time
            engine.evaluator.add_task(f"one{i}", from_records(TASK))
            singles[m.name] = engine.evaluator.losses([f"one{i}"], np.array([[i]]), np.ones((1, 1), np.float32))[0]
        assert min(singles, key=singles.get) == "trained"
        res = engine.adapt(TASK, task="t", modules=2, progress=False, out=tmp_path / "out",
                           config=SearchConfig(budget=6, seed=0, select="loss"))
        assert res.modules[0].name == "trained"
        assert res.extra["select_losses"][0] == pytest.approx(singles["trained"], rel=1e-4)
        meta = json.loads((tmp_path / "out" / "lorahub.json").read_text())
        assert meta["select"] == "loss"
    finally:
        engine.close()


def test_retrieve_chooses_the_module_whose_inputs_look_like_the_task(tiny_llama_dir, hub_with_task_module, tmp_path):
    from lorahub_serve.hub.centroids import compute_centroids

    def inputs_of(task, n):  # the task's inputs for `trained`, unrelated words for the rest
        if task == "trained":
            return [r["input"] for r in TASK]
        return [f"{task} the of and {i} zeta" * 3 for i in range(n)]

    hub = tmp_path / "hub"
    import shutil

    shutil.copytree(hub_with_task_module, hub)
    assert compute_centroids(str(tiny_llama_dir), hub, n_inputs=4, inputs_of=inputs_of, log=lambda *_: None) == 6
    assert compute_centroids(str(tiny_llama_dir), hub, inputs_of=inputs_of, log=lambda *_: None) == 0  # resumes
    engine = Engine(str(tiny_llama_dir), hub, backend="torch", warmup=False)
    try:
        res = engine.adapt(TASK, task="t", modules=1, progress=False,
                           config=SearchConfig(budget=2, seed=0, select="retrieve"))
        assert [m.name for m in res.modules] == ["trained"]
    finally:
        engine.close()


def test_retrieve_without_centroids_names_the_command(tiny_llama_dir, tiny_llama_hub):
    engine = Engine(str(tiny_llama_dir), tiny_llama_hub, backend="torch", warmup=False)
    try:
        with pytest.raises(FileNotFoundError, match="lorahub-serve hub centroids"):
            engine.adapt(TASK, task="t", modules=1, progress=False,
                         config=SearchConfig(budget=2, select="retrieve"))
    finally:
        engine.close()


class EvaluationCounter:
    """Records every candidate row the engine's real evaluator scores (it still scores them)."""

    def __init__(self, engine):
        self.rows: list[tuple[np.ndarray, np.ndarray]] = []  # (hub indices [K], weights [K])
        real = engine.evaluator.losses

        def losses(tasks, module_idx, weights):
            self.rows += list(zip(np.array(module_idx), np.array(weights, dtype=np.float64)))
            return real(tasks, module_idx, weights)

        engine.evaluator.losses = losses

    def alone(self) -> dict[int, int]:
        """Hub index -> rows that had that module alone at weight 1."""
        counts: dict[int, int] = {}
        for idx, w in self.rows:
            on = np.flatnonzero(w)
            if len(on) == 1 and w[on[0]] == 1.0:
                counts[int(idx[on[0]])] = counts.get(int(idx[on[0]]), 0) + 1
        return counts


def test_loss_selection_with_k_at_hub_size_runs_no_selection_pass(tiny_llama_dir, tiny_llama_hub, few_shot):
    engine = Engine(str(tiny_llama_dir), tiny_llama_hub, backend="torch", warmup=False)
    try:
        counter = EvaluationCounter(engine)
        res = engine.adapt(few_shot, task="t", progress=False, config=SearchConfig(budget=12, seed=1, select="loss"))
        assert len(counter.rows) == 12 == res.evaluations  # the search's budget, nothing before it
        assert counter.alone() == {i: 1 for i in range(4)}  # each module alone once: the start batch
        assert res.extra["select_evaluations"] == 0 and res.extra["reused_evaluations"] == 0
        rand = engine.adapt(few_shot, task="t", progress=False, config=SearchConfig(budget=12, seed=1, select="random"))
        assert res.module_idx == rand.module_idx and res.history == rand.history  # every module either way
    finally:
        engine.close()


def test_loss_selection_evaluates_each_module_alone_once(tiny_llama_dir, hub_with_task_module, tmp_path):
    engine = Engine(str(tiny_llama_dir), hub_with_task_module, backend="torch", warmup=False)
    try:
        counter = EvaluationCounter(engine)
        res = engine.adapt(TASK, task="t", modules=2, progress=False, out=tmp_path / "out",
                           config=SearchConfig(budget=10, seed=0, select="loss"))
        assert counter.alone() == {i: 1 for i in range(6)}  # selection pass and search together
        assert len(counter.rows) == 6 + 10 - 2  # N alone, then the budget less the K reused
        assert res.evaluations == 10 and res.extra["reused_evaluations"] == 2
        np.testing.assert_allclose(res.start_losses[1:], res.extra["select_losses"], atol=1e-5)
        meta = json.loads((tmp_path / "out" / "lorahub.json").read_text())
        assert meta["select_evaluations"] == 6 and meta["reused_evaluations"] == 2
        assert meta["select_seconds"] > 0 and meta["search_seconds"] > 0
        assert meta["select_seconds"] + meta["search_seconds"] == pytest.approx(meta["seconds"], abs=2e-3)
    finally:
        engine.close()


def test_select_defaults_to_loss_in_the_python_api_and_the_cli():
    import argparse

    from lorahub_serve.engine.arguments import add_search_arguments, search_config

    p = argparse.ArgumentParser()
    add_search_arguments(p)
    assert SearchConfig().select == "loss" == search_config(p.parse_args([])).select
    assert search_config(p.parse_args(["--select", "random"])).select == "random"  # the paper's
