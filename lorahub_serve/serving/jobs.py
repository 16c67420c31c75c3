"""Adaptation jobs behind `POST /v1/adapters`: validated, queued, run by warm workers, on disk.

Each job has a folder `STORE/.jobs/<id>/` with `request.json` (the request, written once) and
`job.json` (state, loss, progress, error, timings, attempts, owner and lease), both written
atomically (`job_records.py`), so that a server stopped at any point - `kill -9` included -
restarts into a consistent state (`recover`):

- finished jobs (`succeeded`, `failed`, `cancelled`) are reported as they were;
- queued jobs run, in the order they were made;
- a job that was running, and whose server is gone, is re-run (`attempts` counts its starts);
  after `MAX_ATTEMPTS` starts it is marked failed with the reason; if its adapter was already
  written whole, it succeeded;
- temporary folders and files that an interrupted atomic write leaves in the store are removed
  (while another server is using the store: those whose writer, on this host, has exited, and
  any older than an hour).

Several servers may share one store (Ray Serve replicas, `serve --replicas`; or two `serve`
processes started on one store by mistake): they work together by the same rules. A job is
queued on disk; any server with a free worker claims it under the store's lock, so it runs
once; the claim carries the server's token and a lease it renews while the job runs; a job
whose server died (its membership lock is free, or its lease lapsed) is taken back and run by
another. Names are unique store-wide (409), the queue limit counts every server's waiting jobs,
and `DELETE` of a job running elsewhere asks its owner (through the record) to stop it.

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
from collections.abc import Callable
from pathlib import Path

from lorahub_serve.atomic import writer_gone
from lorahub_serve.engine.config import EngineConfig
from lorahub_serve.formats import LORAHUB_FILE
from lorahub_serve.serving.job_records import (
    ACTIVE,
    MAX_ATTEMPTS,
    AdaptJob,
    JobRecords,
    JobState,
    LeaseLost,
)
from lorahub_serve.serving.job_request import (
    AdaptRequest,
    RequestError,
    parse_request,
)
from lorahub_serve.serving.store import AdapterRefused, AdapterStore
from lorahub_serve.serving.worker import WorkerError, WorkerProcess

__all__ = ["ACTIVE", "MAX_ATTEMPTS", "AdaptJob", "AdaptJobs", "JobState", "RequestError",
           "final_loss", "parse_request"]
JOBS_DIR = ".jobs"  # job records, locks and server membership
_TEMP_MARKS = (".tmp-", ".old-", ".deleted-")  # hidden siblings made by atomic writes/removals
_TEMP_MAX_AGE_S = 3600.0  # with other servers alive, only temporaries this old are abandoned
_PROGRESS_EVERY_S = 1.0  # at most one progress write per job per second
_CANCEL_GRACE_S = 30.0  # a running job that ignores a cancel this long has its worker killed
_POLL_S = 0.5  # idle workers look for claimable jobs (also other servers') this often
_HEARTBEAT_S = 2.0  # leases of running jobs are renewed (and remote cancels seen) this often
_SYNC_EVERY_S = 0.2  # the in-memory view of other servers' records is at most this old


class AdaptJobs:
    """The durable job queue of one store, run by `workers` warm worker processes."""

    def __init__(self, store: AdapterStore, model: str, hub: Path | None, timeout_s: float = 3600,
                 workers: int = 1, max_queued: int = 16,
                 check_examples: Callable[[tuple], None] | None = None,
                 worker_command: tuple[str, ...] | None = None,
                 worker_factory: Callable[[int], WorkerProcess] | None = None,
                 engine_config: EngineConfig | None = None,
                 on_change: Callable[[AdaptJob], None] | None = None):
        self.engine_config = engine_config or EngineConfig()
        if workers < 0 or max_queued < 1:
            raise ValueError(f"workers must be >= 0 and max_queued >= 1, got {workers}, {max_queued}")
        self.store, self.model, self.hub = store, model, hub
        self.timeout_s, self.workers, self.max_queued = timeout_s, workers, max_queued
        self.check_examples, self.worker_command = check_examples, worker_command
        self.worker_factory = worker_factory  # slot -> a worker handle (Ray actors); default: processes
        self.on_change = on_change  # called when a job this server runs starts or finishes (metrics)
        self.dir = store.root / JOBS_DIR
        self.records = JobRecords(self.dir)
        self.jobs: dict[str, AdaptJob] = {}
        self._by_name: dict[str, AdaptJob] = {}
        self._wake: asyncio.Event | None = None
        self._loops: list[asyncio.Task] = []
        self._slots: list[WorkerProcess | None] = []
        self._running: dict[str, WorkerProcess] = {}
        self._done: dict[str, asyncio.Event] = {}  # jobs this server has claimed and runs
        self._cancel: set[str] = set()
        self._lost: set[str] = set()
        self._saved_at: dict[str, float] = {}
        self._synced_at = -1e9

    # ------------------------------------------------------------------ records and restart

    def recover(self) -> list[str]:
        """Join the store, clean its temporaries and reload every job record; returns what was
        done. Other servers' running jobs are left to them while they live."""
        self.records.member.join()
        done = self._clean_temporaries()
        with self.records.lock():
            records, bad = self.records.read_all()
            for folder, reason in bad:
                done.append(f"unreadable job record {folder.name} ({reason}); removed")
                shutil.rmtree(folder, ignore_errors=True)
            self._merge(records)
            for job in sorted(self.jobs.values(), key=lambda j: j.created):
                if job.state == "queued":
                    done.append(f"job {job.id} ({job.request.name}): queued -> queued")
                elif job.state == "running" and not self.records.owner_alive(job):
                    done.append(self._take_back(job))
        return done

    def _take_back(self, job: AdaptJob) -> str:
        """A running job whose server is gone (call under the lock). The claim is cleared, so an
        owner that only lost its lease (stalled, not dead) finds it gone at its next write."""
        was, job.owner = job.state, None
        if self._adapter_ok(job.request.name):
            job.loss = final_loss(self.store.folder(job.request.name) / LORAHUB_FILE, job.loss)
            self._finish(job, "succeeded", note="the adapter was written whole before its "
                         "server stopped")
        elif job.attempts >= MAX_ATTEMPTS:
            self._finish(job, "failed", error=f"interrupted {job.attempts} times: the server "
                         "stopped while the job ran (killed, or out of memory?); not re-run")
        else:
            job.note = (f"re-run: the server stopped during attempt {job.attempts} at "
                        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
            job.state, job.lease_until = "queued", None
            self.records.write(job)
        return f"job {job.id} ({job.request.name}): {was} -> {job.state}"

    def _adapter_ok(self, name: str) -> bool:
        try:
            return self.store.inspect(name) is not None
        except (AdapterRefused, ValueError):
            return False

    def _clean_temporaries(self) -> list[str]:
        removed = []
        cutoff = time.time() - _TEMP_MAX_AGE_S if self.records.member.others_alive() else None

        def abandoned(path: Path) -> bool:
            if cutoff is None or writer_gone(path):
                return True
            with contextlib.suppress(FileNotFoundError):
                return path.stat().st_mtime < cutoff
            return False

        for child in self.store.root.iterdir():
            if child.name.startswith(".") and any(m in child.name for m in _TEMP_MARKS) \
                    and abandoned(child):
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
                removed.append(f"removed left-over temporary {child.name}")
        for tmp in self.dir.glob("*/.*.json.*") if self.dir.is_dir() else ():
            if abandoned(tmp):
                tmp.unlink(missing_ok=True)  # write_json_atomic's temporary files
        return removed

    def _sync(self, force: bool = False) -> None:
        """Refresh the in-memory view from disk (other servers' submits, claims, results)."""
        if not force and time.monotonic() - self._synced_at < _SYNC_EVERY_S:
            return
        self._merge(self.records.read_all()[0])

    def _merge(self, records: list[AdaptJob]) -> None:
        self._synced_at = time.monotonic()
        on_disk = {}
        for rec in records:
            on_disk[rec.id] = rec
            if rec.id in self._done:
                continue  # running here: memory is the truth
            if rec.id in self.jobs:
                self.jobs[rec.id].update_from(rec)  # keep the object callers hold
            else:
                self.jobs[rec.id] = rec
        for job_id in [i for i in self.jobs if i not in on_disk and i not in self._done]:
            del self.jobs[job_id]  # forgotten by another server
        self._by_name = {}
        for job in sorted(self.jobs.values(), key=lambda j: j.created):
            self._by_name[job.request.name] = job

    def _save(self, job: AdaptJob) -> None:
        self._saved_at[job.id] = time.monotonic()
        if job.id in self._done:  # ours: check the claim, renew the lease, see remote cancels
            if job.id in self._lost:
                raise LeaseLost(f"job {job.id} was taken over by another server")
            if self.records.renew(job) and job.state == "running":
                self._request_cancel(job)
        else:
            with self.records.lock():
                self.records.write(job)

    # ------------------------------------------------------------------ the public API

    def submit(self, req: AdaptRequest) -> AdaptJob:
        """Queue a job; `RequestError` 503 without a hub, 409 if the name is taken or busy (on
        any server of the store), 429 if the queue is full, 400 if an example does not fit the
        model's context."""
        if self.hub is None:
            raise RequestError("adaptation is not available: this server was started without "
                               "--hub; restart `lorahub-serve serve` with --hub HUB_DIR", code=503)
        self.records.member.join()
        with self.records.lock():
            self._sync(force=True)
            prior = self._by_name.get(req.name)
            if prior is not None and prior.state in ACTIVE:
                raise RequestError(f"adapter {req.name!r} is already being made (job {prior.id})",
                                   code=409, param="name")
            if self.store.exists(req.name):
                raise RequestError(f"adapter {req.name!r} already exists in the store; choose "
                                   "another name", code=409, param="name")
            waiting = sum(j.state == "queued" for j in self.jobs.values())
            if waiting >= self.max_queued:
                raise RequestError(f"the adaptation queue is full ({waiting} jobs waiting, the "
                                   "limit set by --adapt-queue); retry when a job has finished, "
                                   "or cancel one with DELETE /v1/adapters/{name}", code=429)
            if self.check_examples is not None:
                self.check_examples(req.examples)
            job = AdaptJob(id=f"adapt-{uuid.uuid4().hex[:16]}", request=req)
            self.records.write_request(job)
            self._save(job)
            self.jobs[job.id] = job
            self._by_name[req.name] = job
        self.start()
        self._wake.set()
        return job

    def latest(self, name: str) -> AdaptJob | None:
        """The most recent job for adapter `name`, if any (on any server of the store)."""
        self._sync()
        return self._by_name.get(name)

    def listing(self) -> list[AdaptJob]:
        self._sync()
        return sorted(self.jobs.values(), key=lambda j: j.created)

    async def cancel(self, name: str) -> AdaptJob | None:
        """Cancel the queued or running job for `name`; None if it has none active."""
        self._sync(force=True)
        job = self._by_name.get(name)
        if job is None or job.state not in ACTIVE:
            return None
        if job.id not in self._done:
            with self.records.lock():
                self._sync(force=True)
                if job.state == "queued":
                    self._finish(job, "cancelled", note="cancelled while queued")
                    return job
                if job.state == "running":  # on another server: its owner sees the request
                    job.cancel_requested = True
                    self.records.write(job)
            deadline = time.monotonic() + _CANCEL_GRACE_S
            while job.state in ACTIVE and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                self._sync(force=True)
            return job
        self._request_cancel(job)
        worker, done = self._running.get(job.id), self._done.get(job.id)
        if done is not None:
            try:
                await asyncio.wait_for(done.wait(), _CANCEL_GRACE_S)
            except asyncio.TimeoutError:
                if worker is not None:
                    await worker.stop(grace_s=0)  # the run sees the worker die -> cancelled
                await done.wait()
        return job

    def _request_cancel(self, job: AdaptJob) -> None:
        self._cancel.add(job.id)
        if (worker := self._running.get(job.id)) is not None:
            worker.cancel(job.id)

    def forget(self, name: str) -> int:
        """Drop the finished job records of `name` (from memory and disk); returns how many."""
        with self.records.lock():
            self._sync(force=True)
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
        self.records.member.join()
        self._wake = asyncio.Event()
        self._slots = [None] * max(self.workers, 1)
        for i in range(len(self._slots)):
            self._loops.append(asyncio.create_task(self._loop(i), name=f"lorahub-adapt-{i}"))
        self._loops.append(asyncio.create_task(self._heartbeat(), name="lorahub-adapt-leases"))
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
        self.records.member.leave()

    # ------------------------------------------------------------------ running

    def _claim(self) -> AdaptJob | None:
        """Take the oldest queued job of the store (any server's), or None; jobs of servers that
        died are taken back first."""
        with self.records.lock():
            self._sync(force=True)
            order = sorted(self.jobs.values(), key=lambda j: j.created)
            for job in order:
                if job.state == "running" and job.id not in self._done \
                        and not self.records.owner_alive(job):
                    print(f"lorahub-serve: {self._take_back(job)}", flush=True)
            for job in order:
                if job.state == "queued" and job.id not in self._done:
                    self._done[job.id] = asyncio.Event()
                    self.records.claim(job)
                    self._saved_at[job.id] = time.monotonic()
                    return job
        return None

    async def _heartbeat(self) -> None:
        """Renew the leases of the jobs running here; a job taken over elsewhere is stopped."""
        while True:
            await asyncio.sleep(_HEARTBEAT_S)
            for job_id in list(self._done):
                job = self.jobs.get(job_id)
                if job is None or job.state != "running" or job_id in self._lost:
                    continue
                try:
                    self._save(job)
                except LeaseLost:
                    self._lost.add(job_id)
                    if (worker := self._running.get(job_id)) is not None:
                        await worker.stop(grace_s=0)

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
            job = self._claim()
            if job is None:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _POLL_S)
                continue
            self._changed(job)
            try:
                await self._run(slot, job)
            except asyncio.CancelledError:
                job.state, job.note = "queued", "interrupted by a server shutdown; re-run at start"
                job.lease_until = None
                with contextlib.suppress(LeaseLost):
                    self._save(job)
                raise
            except LeaseLost as e:
                print(f"lorahub-serve: {e}; stopped here", flush=True)
            except Exception as e:  # noqa: BLE001 - a job's failure must not stop the queue
                with contextlib.suppress(LeaseLost):
                    self._finish(job, "failed", error=f"{type(e).__name__}: {e}")
            finally:
                self._running.pop(job.id, None)
                self._lost.discard(job.id)
                self._done.pop(job.id).set()
                self._changed(job)
                if self.workers == 0 and self._slots[slot] is not None:
                    await self._slots[slot].stop()  # cold mode: one process per job
                    self._slots[slot] = None

    def _changed(self, job: AdaptJob) -> None:
        if self.on_change is not None:
            with contextlib.suppress(Exception):
                self.on_change(job)

    async def _run(self, slot: int, job: AdaptJob) -> None:
        req = job.request
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
            if job.id in self._lost:
                raise LeaseLost(f"job {job.id} was taken over by another server") from None
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
        job.lease_until, job.cancel_requested = None, False
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
