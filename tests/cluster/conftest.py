"""Cluster-test fixtures: one torch thread, single-process references for _cluster_common's tasks."""

import pytest
from _cluster_common import CONFIG, LOSS_CONFIG, LOSS_K, TASKS, one_thread


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


def _adapt_each(model_dir, hub, store, config, modules=None) -> dict:
    """name -> AdaptResult of single-process `Engine.adapt` of every task, exported to `store`."""
    from lorahub_serve.engine.adapt import Engine

    with one_thread():
        engine = Engine(str(model_dir), hub)
        try:
            return {n: engine.adapt(ex, task=n, config=config, modules=modules, out=store / n, progress=False)
                    for n, ex in TASKS.items()}
        finally:
            engine.close()


@pytest.fixture(scope="session")
def reference(tiny_llama_dir, tiny_llama_hub, tmp_path_factory):
    """name -> AdaptResult of single-process `Engine.adapt`, exported to a store as `adapt` does."""
    return _adapt_each(tiny_llama_dir, tiny_llama_hub, tmp_path_factory.mktemp("reference_store"), CONFIG)


@pytest.fixture(scope="session")
def loss_reference(tiny_llama_dir, tiny_llama_hub, tmp_path_factory):
    """The same with `--select loss` and K = 2 < N = 4: modules chosen by their losses alone."""
    return _adapt_each(tiny_llama_dir, tiny_llama_hub, tmp_path_factory.mktemp("loss_reference_store"),
                       LOSS_CONFIG, LOSS_K)
