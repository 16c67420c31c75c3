"""Adaptation jobs behind `POST /v1/adapters`: validated, queued, run by warm workers, on disk.

Each job has a folder `STORE/.jobs/<id>/` with `request.json` (the request, written once) and
`job.json` (state, loss, progress, error, timings, attempts), both written atomically, so that a
server stopped at any point - `kill -9` included - restarts into a consistent state (`recover`):

- finished jobs (`succeeded`, `failed`, `cancelled`) are reported as they were;
- queued jobs run, in the order they were made;
- a job that was running is re-run (`attempts` counts its starts); after `MAX_ATTEMPTS` starts
  it is marked failed with the reason; if its adapter was already written whole, it succeeded;
- temporary folders and files that an interrupted atomic write leaves in the store are removed.

Jobs are run by `WorkerProcess`es that keep the engine (model + hub) loaded between jobs, one job
at a time each (`workers`); with `workers=0` every job starts a fresh worker (a cold start, the
old behaviour, kept for comparison). The queue holds at most `max_queued` waiting jobs; more get
a 429. Adapters are written atomically into the store, so the resolver never sees half of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lorahub_serve.atomic import write_json_atomic
from lorahub_serve.engine.config import EngineConfig
from lorahub_serve.formats import LORAHUB_FILE
from lorahub_serve.serving.job_request import (
    AdaptRequest,
    RequestError,
    parse_request,
)
from lorahub_serve.serving.store import AdapterRefused, AdapterStore
from lorahub_serve.serving.worker import WorkerError, WorkerProcess

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ACTIVE: tuple[JobState, ...] = ("queued", "running")
MAX_ATTEMPTS = 2  # starts of one job; a job interrupted that often is marked failed
JOBS_DIR = ".jobs"
_TEMP_MARKS = (".tmp-", ".old-", ".deleted-")  # hidden siblings made by atomic writes/removals
_PROGRESS_EVERY_S = 1.0  # at most one progress write per job per second
_CANCEL_GRACE_S = 30.0  # a running job that ignores a cancel this long has its worker killed


@dataclass
class AdaptJob:
    id: str
    request: AdaptRequest
    state: JobState = "queued"
    loss: float | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    attempts: int = 0
    evaluations: int = 0
    budget: int | None = None  # the search's budget (the request's, or the engine's default)
    note: str | None = None  # what happened to the job besides its state (e.g. re-run)

    def to_json(self) -> dict:
        return {"id": self.id, "object": "adapter.job", "name": self.request.name,
                "state": self.state, "loss": self.loss, "error": self.error,
                "evaluations": self.evaluations, "budget": self.budget or self.request.budget,
                "attempts": self.attempts, "note": self.note, "created": self.created,
                "started": self.started, "finished": self.finished}

    @classmethod
    def from_record(cls, record: dict, request: AdaptRequest) -> AdaptJob:
        keys = ("state", "loss", "error", "created", "started", "finished", "attempts",
                "evaluations", "budget", "note")
        return cls(id=record["id"], request=request, **{k: record[k] for k in keys if k in record})


class AdaptJobs:
    """The durable job queue of one store, run by `workers` warm worker processes."""

    def __init__(self, store: AdapterStore, model: str, hub: Path | None, timeout_s: float = 3600,
                 workers: int = 1, max_queued: int = 16,
                 check_examples: Callable[[tuple], None] | None = None,
                 worker_command: tuple[str, ...] | None = None,
                 worker_factory: Callable[[int], WorkerProcess] | None = None,
                 engine_config: EngineConfig | None = None):
        self.engine_config = engine_config or EngineConfig()
        if workers < 0 or max_queued < 1:
            raise ValueError(f"workers must be >= 0 and max_queued >= 1, got {workers}, {max_queued}")
        self.store, self.model, self.hub = store, model, hub
        self.timeout_s, self.workers, self.max_queued = timeout_s, workers, max_queued
        self.check_examples, self.worker_command = check_examples, worker_command
        self.worker_factory = worker_factory  # slot -> a worker handle (Ray actors); default: processes
        self.dir = store.root / JOBS_DIR
        self.jobs: dict[str, AdaptJob] = {}
        self._by_name: dict[str, AdaptJob] = {}
        self._pending: deque[AdaptJob] = deque()
        self._wake: asyncio.Event | None = None
        self._loops: list[asyncio.Task] = []
        self._slots: list[WorkerProcess | None] = []
        self._running: dict[str, WorkerProcess] = {}
        self._done: dict[str, asyncio.Event] = {}
        self._cancel: set[str] = set()
        self._saved_at: dict[str, float] = {}

    # ------------------------------------------------------------------ records and restart

    def recover(self) -> list[str]:
        """Clean the store's temporaries and reload every job record; returns what was done."""
        done = self._clean_temporaries()
        records = []
        for folder in sorted(self.dir.glob("adapt-*")) if self.dir.is_dir() else ():
            try:
                record = json.loads((folder / "job.json").read_text())
                request = parse_request(json.loads((folder / "request.json").read_text()))
                records.append(AdaptJob.from_record(record, request))
            except (OSError, ValueError, KeyError, TypeError) as e:
                done.append(f"unreadable job record {folder.name} ({e}); removed")
                shutil.rmtree(folder, ignore_errors=True)
        for job in sorted(records, key=lambda j: j.created):
            self.jobs[job.id] = job
            self._by_name[job.request.name] = job
            if job.state in ACTIVE:
                done.append(self._resume(job))
        return done

    def _resume(self, job: AdaptJob) -> str:
        was = job.state
        if was == "running" and self._adapter_ok(job.request.name):
            job.loss = final_loss(self.store.folder(job.request.name) / LORAHUB_FILE, job.loss)
            self._finish(job, "succeeded", note="the adapter was written whole before the server "
                         "stopped")
        elif was == "running" and job.attempts >= MAX_ATTEMPTS:
            self._finish(job, "failed", error=f"interrupted {job.attempts} times: the server "
                         "stopped while the job ran (killed, or out of memory?); not re-run")
        else:
            if was == "running":
                job.note = (f"re-run: the server stopped during attempt {job.attempts} at "
                            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
            job.state = "queued"
            self._pending.append(job)
            self._save(job)
        return f"job {job.id} ({job.request.name}): {was} -> {job.state}"

    def _adapter_ok(self, name: str) -> bool:
        try:
            return self.store.inspect(name) is not None
        except (AdapterRefused, ValueError):
            return False

    def _clean_temporaries(self) -> list[str]:
        removed = []
        for child in self.store.root.iterdir():
            if child.name.startswith(".") and any(m in child.name for m in _TEMP_MARKS):
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
                removed.append(f"removed left-over temporary {child.name}")
        for tmp in self.dir.glob("*/.*.json.*") if self.dir.is_dir() else ():
            tmp.unlink(missing_ok=True)  # write_json_atomic's temporary files
        return removed

    def _save(self, job: AdaptJob) -> None:
        self._saved_at[job.id] = time.monotonic()
        write_json_atomic(self.dir / job.id / "job.json", job.to_json())

    # ------------------------------------------------------------------ the public API

    def submit(self, req: AdaptRequest) -> AdaptJob:
        """Queue a job; `RequestError` 503 without a hub, 409 if the name is taken or busy,
        429 if the queue is full, 400 if an example does not fit the model's context."""
        if self.hub is None:
            raise RequestError("adaptation is not available: this server was started without "
                               "--hub; restart `lorahub-serve serve` with --hub HUB_DIR", code=503)
        prior = self._by_name.get(req.name)
        if prior is not None and prior.state in ACTIVE:
            raise RequestError(f"adapter {req.name!r} is already being made (job {prior.id})",
                               code=409, param="name")
        if self.store.exists(req.name):
            raise RequestError(f"adapter {req.name!r} already exists in the store; choose another "
                               "name", code=409, param="name")
        waiting = sum(j.state == "queued" for j in self._pending)
        if waiting >= self.max_queued:
            raise RequestError(f"the adaptation queue is full ({waiting} jobs waiting, the limit "
                               "set by --adapt-queue); retry when a job has finished, or cancel "
                               "one with DELETE /v1/adapters/{name}", code=429)
        if self.check_examples is not None:
            self.check_examples(req.examples)
        job = AdaptJob(id=f"adapt-{uuid.uuid4().hex[:16]}", request=req)
        write_json_atomic(self.dir / job.id / "request.json", req.to_json())
        self._save(job)
        self.jobs[job.id] = job
        self._by_name[req.name] = job
        self._pending.append(job)
        self.start()
        self._wake.set()
        return job

    def latest(self, name: str) -> AdaptJob | None:
        """The most recent job for adapter `name`, if any."""
        return self._by_name.get(name)

    def listing(self) -> list[AdaptJob]:
        return sorted(self.jobs.values(), key=lambda j: j.created)

    async def cancel(self, name: str) -> AdaptJob | None:
        """Cancel the queued or running job for `name`; None if it has none active."""
        job = self._by_name.get(name)
        if job is None or job.state not in ACTIVE:
            return None
        if job.state == "queued":
            with contextlib.suppress(ValueError):
                self._pending.remove(job)
            self._finish(job, "cancelled", note="cancelled while queued")
            return job
        self._cancel.add(job.id)
        worker, done = self._running.get(job.id), self._done.get(job.id)
        if worker is not None:
            worker.cancel(job.id)
        if done is not None:
            try:
                await asyncio.wait_for(done.wait(), _CANCEL_GRACE_S)
            except asyncio.TimeoutError:
                if worker is not None:
                    await worker.stop(grace_s=0)  # the run sees the worker die -> cancelled
                await done.wait()
        return job

    def forget(self, name: str) -> int:
        """Drop the finished job records of `name` (from memory and disk); returns how many."""
        gone = [j for j in self.jobs.values() if j.request.name == name and j.state not in ACTIVE]
        for job in gone:
            del self.jobs[job.id]
            shutil.rmtree(self.dir / job.id, ignore_errors=True)
        if self._by_name.get(name) in gone:
            del self._by_name[name]
        return len(gone)

    def start(self) -> None:
        """Start the worker loops (and warm workers) if not started; needs a running loop."""
        if self._loops or self.hub is None:
            return
        self._wake = asyncio.Event()
        self._slots = [None] * max(self.workers, 1)
        for i in range(len(self._slots)):
            self._loops.append(asyncio.create_task(self._loop(i), name=f"lorahub-adapt-{i}"))
        if self._pending:
            self._wake.set()

    async def close(self) -> None:
        """Stop the loops and workers; a running job goes back to `queued` for the next start."""
        loops, self._loops = self._loops, []
        for task in loops:
            task.cancel()
        for task in loops:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for i, worker in enumerate(self._slots):
            if worker is not None:
                await worker.stop()
            self._slots[i] = None

    # ------------------------------------------------------------------ running

    async def _worker(self, slot: int) -> WorkerProcess:
        worker = self._slots[slot]
        if worker is None or not worker.alive:
            if worker is not None:
                await worker.stop()
            worker = (self.worker_factory(slot) if self.worker_factory is not None else
                      WorkerProcess(self.model, self.hub, self.dir / f"worker-{slot}.log",
                                    self.engine_config, command=self.worker_command))
            await worker.start()
            self._slots[slot] = worker
        return worker

    async def _loop(self, slot: int) -> None:
        if self.workers > 0:  # warm: load the engine before the first job arrives
            worker = await self._worker(slot)
            with contextlib.suppress(WorkerError):
                await worker.wait_ready()
                print(f"lorahub-serve: adaptation worker {slot} ready (model and hub loaded in "
                      f"{worker.load_seconds:.1f} s)", flush=True)
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            job = self._pending.popleft()
            if job.state != "queued":
                continue
            self._done[job.id] = asyncio.Event()
            try:
                await self._run(slot, job)
            except asyncio.CancelledError:
                job.state, job.note = "queued", "interrupted by a server shutdown; re-run at start"
                self._save(job)
                raise
            except Exception as e:  # noqa: BLE001 - a job's failure must not stop the queue
                self._finish(job, "failed", error=f"{type(e).__name__}: {e}")
            finally:
                self._running.pop(job.id, None)
                self._done.pop(job.id).set()
                if self.workers == 0 and self._slots[slot] is not None:
                    await self._slots[slot].stop()  # cold mode: one process per job
                    self._slots[slot] = None

    async def _run(self, slot: int, job: AdaptJob) -> None:
        req = job.request
        job.state, job.started, job.finished = "running", time.time(), None
        job.attempts += 1
        job.error = None
        self._save(job)
        worker = await self._worker(slot)
        if job.id in self._cancel:  # cancelled while its worker was being started
            self._finish(job, "cancelled", note="cancelled while running")
            return
        self._running[job.id] = worker
        payload = {k: v for k, v in req.to_json().items() if k != "name"}
        payload["out"] = str(self.store.folder(req.name))

        def on_progress(msg: dict) -> None:
            job.evaluations = int(msg.get("evaluations") or 0)
            job.budget = msg.get("budget") or job.budget
            if msg.get("best_loss") is not None:
                job.loss = float(msg["best_loss"])
            if time.monotonic() - self._saved_at.get(job.id, 0) >= _PROGRESS_EVERY_S:
                self._save(job)

        try:
            final = await asyncio.wait_for(worker.run(job.id, payload, on_progress), self.timeout_s)
        except asyncio.TimeoutError:
            await worker.stop(grace_s=0)
            self._finish(job, "failed", error=f"adaptation timed out after {self.timeout_s:.0f} s")
            return
        except WorkerError as e:
            if job.id in self._cancel:
                self._finish(job, "cancelled", note="cancelled while running")
            else:
                self._finish(job, "failed", error=str(e))
            return
        event = final["event"]
        if event == "cancelled":
            self._finish(job, "cancelled", note="cancelled while running")
        elif event == "failed":
            self._finish(job, "failed", error=final.get("error") or "the adaptation failed")
        else:
            job.evaluations = int(final.get("evaluations") or job.evaluations)
            self._check_result(job, final.get("loss"))

    def _check_result(self, job: AdaptJob, loss: float | None) -> None:
        name = job.request.name
        try:
            info = self.store.inspect(name)
        except AdapterRefused as e:
            self._finish(job, "failed", error=f"adapt wrote an adapter the server refuses: {e}")
            return
        if info is None:
            self._finish(job, "failed", error=f"adapt finished but wrote no adapter named {name!r}")
            return
        job.loss = final_loss(info.path / LORAHUB_FILE, loss)
        self._finish(job, "succeeded")

    def _finish(self, job: AdaptJob, state: JobState, error: str | None = None,
                note: str | None = None) -> None:
        job.state, job.error, job.finished = state, error, time.time()
        if note is not None:
            job.note = note
        self._cancel.discard(job.id)
        self._save(job)


def final_loss(meta_path: Path, fallback: float | None) -> float | None:
    """Best loss recorded in `lorahub.json` (`best_loss`, `loss`, or the curve's minimum)."""
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return fallback
    if not isinstance(meta, dict):
        return fallback
    for key in ("best_loss", "loss"):
        if isinstance(meta.get(key), (int, float)):
            return float(meta[key])
    curve = meta.get("objective_history", meta.get("loss_history"))
    if isinstance(curve, list):
        values = [v if isinstance(v, (int, float)) else (v or {}).get("loss") for v in curve
                  if isinstance(v, (int, float, dict))]
        values = [float(v) for v in values if isinstance(v, (int, float))]
        if values:
            return min(values)
    return fallback
