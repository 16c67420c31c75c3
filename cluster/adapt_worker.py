"""Adaptation workers of `serve` as Ray actors (`lorahub-serve serve --ray-address ADDR`).

`AdaptWorkerCore` is the plain object (tested without Ray): an `Engine` (model + hub) loaded
once, and the job protocol of `lorahub_serve.serving.worker` - `adapt(msg)` runs one job and
returns its final event, `progress(id)` the latest progress event, `cancel(id)` stops a job after
its current generation. `RayAdaptWorker` is the server's handle on one such actor, with the same
interface as `serving.worker.WorkerProcess`, so the job queue treats both alike. Adapters are
written by the actor into the store: on a multi-node cluster the store must be a folder that
every node sees at the same path.

Start-up faults are the adapt-batch pool's (`cluster/actors.py`): an actor whose process dies
before it has loaded (killed, out of memory, node lost) is replaced, at most `max_starts`
starts in all; one whose constructor raises (missing model, bad hub) fails at once with that
error. An actor that dies during a job fails that job, and the next job gets a fresh actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any


class AdaptWorkerCore:
    """Engine + jobs, without Ray (the actor's body)."""

    def __init__(self, model: str, hub: str, engine_config=None):
        from lorahub_serve.engine.adapt import Engine

        t0 = time.perf_counter()
        self.engine = Engine(model, hub, engine_config)
        import peft  # noqa: F401 - the export's first import, paid here rather than in a job

        self.load_seconds = round(time.perf_counter() - t0, 3)
        self.cancelled: set[str] = set()
        self.latest: dict[str, dict] = {}

    def ready(self) -> float:
        return self.load_seconds

    def adapt(self, msg: dict) -> dict:
        from lorahub_serve.engine.job import run_job

        job_id, final = str(msg["id"]), []

        def emit(event: dict) -> None:
            if event["event"] == "progress":
                self.latest[job_id] = event
            else:
                final.append(event)

        try:
            run_job(self.engine, msg, self.cancelled, emit)
        finally:
            self.latest.pop(job_id, None)
            self.cancelled.discard(job_id)
        return final[-1]

    def progress(self, job_id: str) -> dict | None:
        return self.latest.get(job_id)

    def cancel(self, job_id: str) -> None:
        self.cancelled.add(job_id)


class RayAdaptWorker:
    """The server's handle on one `AdaptWorkerCore` actor (interface of `WorkerProcess`)."""

    poll_s = 0.5
    max_starts = 3  # actor processes to try when each dies while loading

    def __init__(self, model: str, hub: Path, address: str | None, engine_config=None,
                 num_cpus: float = 1):
        self.model, self.hub, self.address, self.engine_config = model, str(hub), address, engine_config
        self.num_cpus = num_cpus
        self.actor = None
        self.load_seconds: float | None = None
        self.starts = 0  # actors started by the last `start()` (replacements included)
        self._ready = None
        self._dead = False

    @property
    def alive(self) -> bool:
        return self.actor is not None and not self._dead

    async def start(self) -> None:
        import ray

        if not ray.is_initialized():
            await asyncio.to_thread(ray.init, address=self.address, logging_level="WARNING",
                                    include_dashboard=False)
        self.starts = 0
        self._launch()

    def _launch(self) -> None:
        import ray

        # Threaded actor: progress/cancel are answered while `adapt` runs.
        actor_cls = ray.remote(max_concurrency=4)(AdaptWorkerCore)
        self.actor = actor_cls.options(num_cpus=self.num_cpus).remote(self.model, self.hub, self.engine_config)
        self._ready = asyncio.wrap_future(self.actor.ready.remote().future())
        self._dead = False
        self.starts += 1

    async def wait_ready(self, timeout_s: float = 600.0) -> None:
        """Wait until the actor has loaded; replace it if its process dies on the way."""
        import ray

        from lorahub_serve.cluster.actors import init_error
        from lorahub_serve.engine.job import WorkerError

        while True:
            ready = self._ready
            try:
                self.load_seconds = await asyncio.wait_for(asyncio.shield(ready), timeout_s)
                return
            except asyncio.TimeoutError:
                raise WorkerError(f"the adaptation actor did not load within {timeout_s:.0f} s") from None
            except Exception as e:  # noqa: BLE001 - Ray's errors: the actor could not start
                if ready is not self._ready:  # another waiter has started a replacement
                    continue
                if getattr(e, "actor_init_failed", False):  # its constructor raised: fatal
                    self._dead = True
                    raise WorkerError(f"the adaptation actor cannot start: {init_error(e)}") from None
                if self.starts >= self.max_starts:
                    self._dead = True
                    first = (str(e).strip().splitlines() or [""])[0]
                    raise WorkerError(f"the adaptation actor died while loading, {self.starts} "
                                      f"times; last: {type(e).__name__}: {first}") from None
                with contextlib.suppress(Exception):
                    ray.kill(self.actor)
                self._launch()

    async def run(self, job_id: str, payload: dict[str, Any],
                  on_progress: Callable[[dict], Awaitable[None] | None]) -> dict:
        from lorahub_serve.engine.job import WorkerError

        await self.wait_ready()
        result = asyncio.wrap_future(self.actor.adapt.remote({"op": "adapt", "id": job_id,
                                                              **payload}).future())
        try:
            while True:
                done, _ = await asyncio.wait({result}, timeout=self.poll_s)
                if done:
                    return result.result()
                msg = await asyncio.wrap_future(self.actor.progress.remote(job_id).future())
                if msg is not None and (pending := on_progress(msg)) is not None:
                    await pending
        except Exception as e:  # noqa: BLE001 - Ray's errors: the actor died during the job
            self._dead = True
            raise WorkerError(f"the adaptation actor failed: {type(e).__name__}: {e}") from None

    def cancel(self, job_id: str) -> None:
        if self.alive:
            self.actor.cancel.remote(job_id)

    async def stop(self, grace_s: float = 5.0) -> None:
        import ray

        if self.actor is not None:
            ray.kill(self.actor)
        self._dead = True
