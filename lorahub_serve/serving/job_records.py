"""Adaptation job records on disk, shared by every server on one store, with owners and leases.

`STORE/.jobs/<id>/request.json` (the request, written once) and `job.json` (state, progress,
timings, and while it runs: `owner`, the token of the server running it, and `lease_until`, the
wall time by which that server must renew its claim). Every change of a record that another
server could race with happens under `store_lock` (submit, claim, lease renewal, cancel, forget),
and every file is written atomically, so records are read without a lock.

A running job's owner is alive while it holds its membership lock (`store_locks.Membership`) and
renews its lease; when either fails, another server takes the job back (`take_back`) and runs it
again (or marks it succeeded, if its adapter was written whole, or failed after `MAX_ATTEMPTS`).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

from lorahub_serve.atomic import write_json_atomic
from lorahub_serve.serving.job_request import AdaptRequest, parse_request
from lorahub_serve.serving.store_locks import Membership, store_lock

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ACTIVE: tuple[JobState, ...] = ("queued", "running")
MAX_ATTEMPTS = 2  # starts of one job; a job interrupted that often is marked failed
LEASE_S = 60.0  # a running job's claim lasts this long unless its server renews it
_RECORD_KEYS = ("state", "loss", "error", "created", "started", "finished", "attempts",
                "evaluations", "budget", "note", "owner", "lease_until", "cancel_requested")


class LeaseLost(RuntimeError):
    """Another server has taken over a job this server was running (its lease had lapsed)."""


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
    owner: str | None = None  # the server running it (or that ran it last)
    lease_until: float | None = None  # while running: the owner's claim ends here unless renewed
    cancel_requested: bool = False  # DELETE reached another server: the owner stops the job

    def to_json(self) -> dict:
        return {"id": self.id, "object": "adapter.job", "name": self.request.name,
                "state": self.state, "loss": self.loss, "error": self.error,
                "evaluations": self.evaluations, "budget": self.budget or self.request.budget,
                "attempts": self.attempts, "note": self.note, "created": self.created,
                "started": self.started, "finished": self.finished, "owner": self.owner,
                "lease_until": self.lease_until, "cancel_requested": self.cancel_requested}

    @classmethod
    def from_record(cls, record: dict, request: AdaptRequest) -> AdaptJob:
        return cls(id=record["id"], request=request, **{k: record[k] for k in _RECORD_KEYS if k in record})

    def update_from(self, other: AdaptJob) -> None:
        """Take `other`'s fields (a fresher copy of this job's record), keeping this object."""
        for f in fields(self):
            setattr(self, f.name, getattr(other, f.name))


class JobRecords:
    """The `.jobs/` folder of one store, as seen by one server (`member`)."""

    def __init__(self, jobs_dir: Path):
        self.dir = Path(jobs_dir)
        self.member = Membership(self.dir)
        self._depth = 0

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The store-wide record lock; re-entrant within this object (one event loop thread)."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        with store_lock(self.dir):
            self._depth = 1
            try:
                yield
            finally:
                self._depth = 0

    def read(self, job_id: str) -> AdaptJob:
        folder = self.dir / job_id
        record = json.loads((folder / "job.json").read_text())
        return AdaptJob.from_record(record, parse_request(json.loads((folder / "request.json").read_text())))

    def read_all(self) -> tuple[list[AdaptJob], list[tuple[Path, str]]]:
        """Every readable record, and (folder, reason) for each unreadable one."""
        jobs, bad = [], []
        for folder in sorted(self.dir.glob("adapt-*")) if self.dir.is_dir() else ():
            try:
                jobs.append(self.read(folder.name))
            except (OSError, ValueError, KeyError, TypeError) as e:
                bad.append((folder, str(e)))
        return jobs, bad

    def write(self, job: AdaptJob) -> None:
        write_json_atomic(self.dir / job.id / "job.json", job.to_json())

    def write_request(self, job: AdaptJob) -> None:
        write_json_atomic(self.dir / job.id / "request.json", job.request.to_json())

    def owner_alive(self, job: AdaptJob) -> bool:
        """Whether the server that claimed this running job still holds it."""
        if job.lease_until is not None and time.time() > job.lease_until:
            return False
        return self.member.alive(job.owner)

    def claim(self, job: AdaptJob) -> None:
        """Mark a queued job running here (call under `lock`)."""
        job.state, job.started, job.finished, job.error = "running", time.time(), None, None
        job.attempts, job.evaluations = job.attempts + 1, 0  # a re-run searches from the start
        job.owner, job.cancel_requested = self.member.token, False
        job.lease_until = time.time() + LEASE_S
        self.write(job)

    def renew(self, job: AdaptJob) -> bool:
        """Before writing a job this server runs: raise `LeaseLost` if another server has taken
        it; extend the lease; return whether a cancel was requested through another server."""
        with self.lock():
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                disk = self.read(job.id)
                if disk.owner != self.member.token:
                    raise LeaseLost(f"job {job.id} was taken over by {disk.owner}")
                job.cancel_requested = job.cancel_requested or disk.cancel_requested
            if job.state == "running":
                job.lease_until = time.time() + LEASE_S
            self.write(job)
        return job.cancel_requested
