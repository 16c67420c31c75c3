"""serve's adaptation workers as Ray actors: the plain core, then jobs on a local Ray cluster."""

import asyncio

import pytest
from _cluster_common import StartupKiller

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


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_jobs_on_ray_actors(ray_cluster, tiny_llama_dir, tiny_llama_hub, tmp_path):
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
    assert ok.evaluations == 6 and store.inspect("ok") is not None
    assert long.state == "cancelled" and not store.exists("long")


@pytest.mark.ray
def test_actor_killed_while_loading_is_replaced(ray_cluster, tiny_llama_dir, tiny_llama_hub, tmp_path):
    worker = RayAdaptWorker(str(tiny_llama_dir), tiny_llama_hub, None)

    async def scenario():
        with StartupKiller("AdaptWorkerCore") as killer:
            await worker.start()
            await worker.wait_ready(timeout_s=300)
        done = await worker.run("j1", {"examples": GOOD, "budget": 4, "out": str(tmp_path / "a")},
                                lambda msg: None)
        await worker.stop()
        return killer.killed, done

    killed, done = asyncio.run(scenario())
    assert killed is not None, "no actor was seen loading"
    assert worker.starts == 2  # the killed one, then its replacement
    assert done["event"] == "done" and done["evaluations"] == 4 and (tmp_path / "a").is_dir()


@pytest.mark.ray
def test_actor_that_cannot_load_fails_at_once_naming_why(ray_cluster, tiny_llama_dir, tmp_path):
    from lorahub_serve.serving.worker import WorkerError

    worker = RayAdaptWorker(str(tiny_llama_dir), tmp_path / "no-hub", None)

    async def scenario():
        await worker.start()
        with pytest.raises(WorkerError) as err:
            await worker.wait_ready(timeout_s=300)
        return str(err.value)

    message = asyncio.run(scenario())
    assert message.startswith("the adaptation actor cannot start: HubError: hub "), message
    assert str(tmp_path / "no-hub") in message
    assert worker.starts == 1 and not worker.alive  # not retried: every try would fail alike
