"""Cluster-test fixtures: one torch thread, single-process references for _cluster_common's tasks."""

import pytest
from _cluster_common import CONFIG, TASKS, one_thread


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def reference(tiny_llama_dir, tiny_llama_hub, tmp_path_factory):
    """name -> AdaptResult of single-process `Engine.adapt`, exported to a store as `adapt` does."""
    from lorahub_serve.engine.adapt import Engine

    store = tmp_path_factory.mktemp("reference_store")
    with one_thread():
        engine = Engine(str(tiny_llama_dir), tiny_llama_hub)
        try:
            return {n: engine.adapt(ex, task=n, config=CONFIG, out=store / n, progress=False)
                    for n, ex in TASKS.items()}
        finally:
            engine.close()
