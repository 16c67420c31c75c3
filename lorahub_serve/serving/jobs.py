"""Adaptation jobs behind `POST /v1/adapters`: validate, queue, run `lorahub-serve adapt`.

Jobs run one at a time (adaptation uses every core it gets) as a subprocess:
`python -m lorahub_serve.cli adapt --model M --hub H --examples FILE --out STORE/NAME
[--budget B] [--seed S] [--modules K]`. The CLI writes the adapter atomically into the store, so
the resolver never sees half an adapter; once the job has succeeded its name is served.
Each job keeps its examples and log under `STORE/.jobs/<id>/` (a hidden folder, never a name).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..data.examples import Example, ExampleError, from_records, write_jsonl
from .names import AdapterNameError, check_name
from .store import LORAHUB_FILE, AdapterRefused, AdapterStore

JobState = Literal["queued", "running", "succeeded", "failed"]
MAX_EXAMPLES = 1000
_FIELDS = {"name", "examples", "budget", "modules", "seed"}
_INT_LIMITS = {"budget": (1, 100_000), "modules": (1, 10_000), "seed": (0, 2**32 - 1)}
_MODULE = re.compile(r"[A-Za-z0-9._-]{1,200}")
_LOSS = re.compile(r"\bloss\b\s*[=:]\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)")
DEFAULT_COMMAND = (sys.executable, "-m", "lorahub_serve.cli", "adapt")


class RequestError(ValueError):
    """A bad adaptation request; `code` is the HTTP status, `param` the offending field."""

    def __init__(self, message: str, code: int = 400, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.param = param


@dataclass(frozen=True)
class AdaptRequest:
    name: str
    examples: tuple[Example, ...]
    budget: int | None = None
    modules: int | tuple[str, ...] | None = None  # K random hub modules, or their names
    seed: int | None = None


def parse_request(body: Any) -> AdaptRequest:
    """Validate a `POST /v1/adapters` body; raises `RequestError` naming the problem."""
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object with 'name' and 'examples'")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise RequestError(f"unknown field(s) {unknown}; allowed: {sorted(_FIELDS)}", param=unknown[0])
    if "name" not in body:
        raise RequestError("missing field 'name' (the adapter's name)", param="name")
    try:
        name = check_name(body["name"])
    except AdapterNameError as e:
        raise RequestError(str(e), param="name") from None
    records = body.get("examples")
    if not isinstance(records, list):
        raise RequestError("'examples' must be a list of {\"input\", \"output\"} objects",
                           param="examples")
    if len(records) > MAX_EXAMPLES:
        raise RequestError(f"{len(records)} examples given; at most {MAX_EXAMPLES} are accepted",
                           param="examples")
    try:
        examples = tuple(from_records(records))
    except ExampleError as e:
        raise RequestError(str(e), param="examples") from None
    options: dict[str, Any] = {}
    modules = body.get("modules")
    if isinstance(modules, list):  # named hub modules rather than a count
        if not modules or not all(isinstance(m, str) and _MODULE.fullmatch(m) for m in modules):
            raise RequestError("'modules' must be a count or a non-empty list of hub module names "
                               "(letters, digits, '.', '_', '-')", param="modules")
        options["modules"] = tuple(modules)
    for key, (lo, hi) in _INT_LIMITS.items():
        if key in options:
            continue
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise RequestError(f"'{key}' must be an integer in [{lo}, {hi}], got {value!r}", param=key)
        options[key] = value
    return AdaptRequest(name, examples, **options)


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

    def to_json(self) -> dict:
        return {"id": self.id, "object": "adapter.job", "name": self.request.name,
                "state": self.state, "loss": self.loss, "error": self.error,
                "created": self.created, "started": self.started, "finished": self.finished}


class AdaptJobs:
    """Queue of adaptation jobs for one store, run one at a time in this event loop."""

    def __init__(self, store: AdapterStore, model: str, hub: Path | None, timeout_s: float = 3600,
                 command: tuple[str, ...] = DEFAULT_COMMAND):
        self.store, self.model, self.hub = store, model, hub
        self.timeout_s, self.command = timeout_s, tuple(command)
        self.jobs: dict[str, AdaptJob] = {}
        self._by_name: dict[str, AdaptJob] = {}
        self._queue: asyncio.Queue[AdaptJob] | None = None
        self._worker: asyncio.Task | None = None
        self._proc: asyncio.subprocess.Process | None = None

    def submit(self, req: AdaptRequest) -> AdaptJob:
        """Queue a job; `RequestError` 503 without a hub, 409 if the name is taken or busy."""
        if self.hub is None:
            raise RequestError("adaptation is not available: this server was started without "
                               "--hub; restart `lorahub-serve serve` with --hub HUB_DIR", code=503)
        prior = self._by_name.get(req.name)
        if prior is not None and prior.state in ("queued", "running"):
            raise RequestError(f"adapter {req.name!r} is already being made (job {prior.id})",
                               code=409, param="name")
        if self.store.exists(req.name):
            raise RequestError(f"adapter {req.name!r} already exists in the store; choose another "
                               "name", code=409, param="name")
        job = AdaptJob(id=f"adapt-{uuid.uuid4().hex[:16]}", request=req)
        self.jobs[job.id] = job
        self._by_name[req.name] = job
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._work(), name="lorahub-adapt-jobs")
        self._queue.put_nowait(job)
        return job

    def latest(self, name: str) -> AdaptJob | None:
        """The most recent job for adapter `name`, if any."""
        return self._by_name.get(name)

    async def close(self) -> None:
        """Stop the worker and terminate a running adaptation (its job is marked failed)."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker
        await self._stop_proc()

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            job = await self._queue.get()
            try:
                await self._run(job)
            except asyncio.CancelledError:
                self._finish(job, "failed", error="the server shut down during adaptation")
                raise
            except Exception as e:  # noqa: BLE001 - a job's failure must not stop the queue
                self._finish(job, "failed", error=f"{type(e).__name__}: {e}")

    def _argv(self, job: AdaptJob, examples_file: Path) -> list[str]:
        req = job.request
        argv = [*self.command, "--model", self.model, "--hub", str(self.hub),
                "--examples", str(examples_file), "--out", str(self.store.folder(req.name))]
        modules = ",".join(req.modules) if isinstance(req.modules, tuple) else req.modules
        for flag, value in (("--budget", req.budget), ("--seed", req.seed), ("--modules", modules)):
            if value is not None:
                argv += [flag, str(value)]
        return argv

    async def _run(self, job: AdaptJob) -> None:
        work = self.store.root / ".jobs" / job.id
        work.mkdir(parents=True, exist_ok=True)
        examples_file = work / "examples.jsonl"
        write_jsonl(examples_file, job.request.examples)
        job.state, job.started = "running", time.time()
        with open(work / "log.txt", "wb") as log:  # noqa: ASYNC230 - local file, written as we go
            self._proc = await asyncio.create_subprocess_exec(
                *self._argv(job, examples_file), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True)  # Ctrl-C on the terminal goes to serve, which stops us
            tail: list[str] = []
            try:
                await asyncio.wait_for(self._follow(job, log, tail), self.timeout_s)
            except asyncio.TimeoutError:
                await self._stop_proc()
                self._finish(job, "failed", error=f"adaptation timed out after {self.timeout_s:.0f} s")
                return
            code = await self._proc.wait()
            self._proc = None
        if code != 0:
            self._finish(job, "failed", error=f"adapt exited with status {code}: "
                         + "\n".join(tail[-20:]).strip())
            return
        self._check_result(job)

    async def _follow(self, job: AdaptJob, log, tail: list[str]) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        pending = ""
        # Chunks, not readline(): progress bars write long runs of '\r' without a newline.
        while chunk := await self._proc.stdout.read(1 << 16):
            log.write(chunk)
            log.flush()
            *lines, pending = re.split(r"[\r\n]", pending + chunk.decode("utf-8", "replace"))
            for line in filter(None, (s.rstrip() for s in lines)):
                tail.append(line)
                if m := _LOSS.findall(line):
                    job.loss = float(m[-1])
            del tail[:-50]
            pending = pending[-4096:]
        if pending.strip():
            tail.append(pending.rstrip())

    def _check_result(self, job: AdaptJob) -> None:
        name = job.request.name
        try:
            info = self.store.inspect(name)
        except AdapterRefused as e:
            self._finish(job, "failed", error=f"adapt wrote an adapter the server refuses: {e}")
            return
        if info is None:
            self._finish(job, "failed", error=f"adapt exited 0 but wrote no adapter named {name!r}")
            return
        job.loss = final_loss(info.path / LORAHUB_FILE, job.loss)
        self._finish(job, "succeeded")

    @staticmethod
    def _finish(job: AdaptJob, state: JobState, error: str | None = None) -> None:
        job.state, job.error, job.finished = state, error, time.time()

    async def _stop_proc(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


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
