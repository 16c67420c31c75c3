"""serve's adaptation workers as Ray actors: the plain core, then jobs on a local Ray cluster."""

import asyncio

import pytest

from lorahub_serve.cluster.adapt_worker import AdaptWorkerCore, RayAdaptWorker
from lorahub_serve.serving.jobs import AdaptJobs, parse_request
from lorahub_serve.serving.store import AdapterStore, BaseModelShapes

GOOD = [{"input": "Q: 2 and 3?\nA:", "output": " 5"}]


def test_core_runs_and_cancels_jobs_without_ray(tiny_llama_dir, tiny_llama_hub, tmp_path):
    core = AdaptWorkerCore(str(tiny_llama_dir), str(tiny_llama_hub))
    done = core.adapt({"id": "j1", "examples": GOOD, "budget": 4, "out": str(tmp_path / "a")})
    assert done["event"] == "done" and done["evaluations"] == 4 and (tmp_path / "a").is_dir()
    core.cancel("j2")
    assert core.adapt({"id": "j2", "examples": GOOD, "out": str(tmp_path / "b")})["event"] == "cancelled"
    bad = core.adapt({"id": "j3", "examples": GOOD, "modules": ["nope"], "out": str(tmp_path / "c")})
    assert bad["event"] == "failed" and "nope" in bad["error"]
    assert core.progress("j1") is None and not core.cancelled


@pytest.mark.ray
def test_jobs_on_ray_actors(tiny_llama_dir, tiny_llama_hub, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        (tmp_path / "store").mkdir()
        store = AdapterStore(tmp_path / "store", BaseModelShapes.from_folder(tiny_llama_dir), 16)
        jobs = AdaptJobs(store, str(tiny_llama_dir), tiny_llama_hub, timeout_s=300,
                         worker_factory=lambda slot: RayAdaptWorker(str(tiny_llama_dir),
                                                                    tiny_llama_hub, None))

        async def scenario():
            ok = jobs.submit(parse_request({"name": "ok", "examples": GOOD, "budget": 6}))
            long = jobs.submit(parse_request({"name": "long", "examples": GOOD, "budget": 100_000}))
            while long.evaluations == 0:  # progress polled from the actor
                await asyncio.sleep(0.1)
            assert ok.state == "succeeded"
            await jobs.cancel("long")
            await jobs.close()
            return ok, long

        ok, long = asyncio.run(scenario())
    finally:
        ray.shutdown()
    assert ok.evaluations == 6 and store.inspect("ok") is not None
    assert long.state == "cancelled" and not store.exists("long")
