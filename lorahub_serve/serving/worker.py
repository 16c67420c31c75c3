"""Adaptation workers: a process that keeps an `Engine` (base model + hub) warm and runs jobs.

    python -m lorahub_serve.serving.worker --model M --hub H [--engine-config JSON]

The protocol is JSON lines, one object per line (data, never scraped text):

- parent -> worker on stdin:
  `{"op": "adapt", "id", "task", "examples": [{"input", "output"}...], "out", "budget"?,
  "seed"?, "modules"?, "export"?}` and `{"op": "cancel", "id"}`. End of stdin (the parent exited, even by
  `kill -9`) stops the worker at once.
- worker -> parent on stdout: `{"event": "ready", "seconds"}` once the engine is loaded (or
  `{"event": "broken", "error"}` if it cannot be), then per job `{"event": "progress", "id",
  "evaluations", "budget", "best_loss"}` after each search generation and one of
  `{"event": "done", "id", "loss", "evaluations", "seconds"}`, `{"event": "failed", "id",
  "error"}` or `{"event": "cancelled", "id"}`.

The worker's own stdout is moved to stderr before anything is imported, so a library that prints
cannot corrupt the protocol. `WorkerProcess` is the parent's side (asyncio); this module imports
no torch until the worker's `main` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

from lorahub_serve.engine.config import EngineConfig
from lorahub_serve.engine.job import WorkerError, run_job

READY_TIMEOUT_S = 600.0  # loading a model and hub on a busy CPU can take minutes


# ----------------------------------------------------------------------------- worker side


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (EOF on stdin covers other systems)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _read_commands(jobs: queue.Queue, cancelled: set[str]) -> None:
    """stdin reader thread: queue `adapt` commands, note cancels; exit the process on EOF."""
    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("op") == "cancel":
            cancelled.add(str(msg.get("id")))
        elif msg.get("op") == "adapt":
            jobs.put(msg)
    os._exit(0)  # the parent is gone: stop now, mid-search or not


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lorahub_serve.serving.worker")
    p.add_argument("--model", required=True)
    p.add_argument("--hub", required=True)
    p.add_argument("--engine-config", default="{}", help="EngineConfig fields as JSON")
    a = p.parse_args(argv)
    proto = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol keeps the real stdout...
    os.dup2(2, 1)  # ...and anything else printed goes to stderr
    sys.stdout = sys.stderr
    lock = threading.Lock()

    def emit(msg: dict) -> None:
        with lock:
            proto.write(json.dumps(msg) + "\n")

    _die_with_parent()
    jobs: queue.Queue = queue.Queue()
    cancelled: set[str] = set()
    threading.Thread(target=_read_commands, args=(jobs, cancelled), daemon=True).start()
    t0 = time.perf_counter()
    try:
        from lorahub_serve.engine.adapt import Engine

        engine = Engine(a.model, a.hub, EngineConfig(**json.loads(a.engine_config)))
        import peft  # noqa: F401 - the export's first import, paid here rather than in a job
    except Exception as e:  # noqa: BLE001 - the parent reports it on every job
        emit({"event": "broken", "error": f"{type(e).__name__}: {e}"})
        return 1
    emit({"event": "ready", "seconds": round(time.perf_counter() - t0, 3)})
    while True:
        run_job(engine, jobs.get(), cancelled, emit)


# ----------------------------------------------------------------------------- parent side


class WorkerProcess:
    """The parent's handle on one worker process: start it, run jobs one at a time, cancel, stop.

    `command` starts the worker (tests may point it elsewhere); its stderr goes to `log_path`.
    """

    def __init__(self, model: str, hub: Path, log_path: Path, engine_config: EngineConfig | None = None,
                 command: tuple[str, ...] | None = None):
        config = json.dumps((engine_config or EngineConfig()).to_dict())
        self.argv = [*(command or (sys.executable, "-m", "lorahub_serve.serving.worker")),
                     "--model", str(model), "--hub", str(hub), "--engine-config", config]
        self.log_path = Path(log_path)
        self.proc: asyncio.subprocess.Process | None = None
        self.ready: asyncio.Future | None = None
        self.load_seconds: float | None = None
        self._events: asyncio.Queue[dict | None] = asyncio.Queue()
        self._reader: asyncio.Task | None = None
        self._log: IO[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        """Launch the process (returns at once; `wait_ready` waits for the engine to load)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115, ASYNC230 - small; closed in stop()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=self._log, start_new_session=True)  # Ctrl-C goes to serve, which stops us
        self.ready = asyncio.get_running_loop().create_future()
        self._events = asyncio.Queue()
        self._reader = asyncio.create_task(self._read(), name="lorahub-worker-reader")

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        assert self.ready is not None, "start() first"
        try:
            await asyncio.wait_for(asyncio.shield(self.ready), timeout_s)
        except asyncio.TimeoutError:
            raise WorkerError(f"the adaptation worker did not load the model and hub within "
                              f"{timeout_s:.0f} s; see {self.log_path}") from None

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("event") == "ready" and not self.ready.done():
                self.load_seconds = msg.get("seconds")
                self.ready.set_result(True)
            elif msg.get("event") == "broken" and not self.ready.done():
                self.ready.set_exception(WorkerError(f"the adaptation worker cannot start: "
                                                     f"{msg.get('error')}"))
            else:
                await self._events.put(msg)
        code = await self.proc.wait()
        if not self.ready.done():
            self.ready.set_exception(WorkerError(self._died(code)))
        await self._events.put(None)  # end of stream

    def _died(self, code: int | None) -> str:
        tail = ""
        with contextlib.suppress(OSError):
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-15:])
        return f"the adaptation worker exited with status {code}: {tail}".strip()

    def _send(self, msg: dict) -> None:
        if not self.alive or self.proc.stdin is None:
            raise WorkerError("the adaptation worker is not running")
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())

    async def run(self, job_id: str, payload: dict[str, Any],
                  on_progress: Callable[[dict], Awaitable[None] | None]) -> dict:
        """Run one job; returns its final event (`done`, `failed` or `cancelled`).

        Raises `WorkerError` if the worker dies during the job.
        """
        await self.wait_ready()
        self._send({"op": "adapt", "id": job_id, **payload})
        await self.proc.stdin.drain()
        while True:
            msg = await self._events.get()
            if msg is None:
                raise WorkerError(self._died(self.proc.returncode))
            if msg.get("id") != job_id:
                continue
            if msg.get("event") == "progress":
                if (pending := on_progress(msg)) is not None:
                    await pending
            elif msg.get("event") in ("done", "failed", "cancelled"):
                return msg

    def cancel(self, job_id: str) -> None:
        """Ask the worker to stop `job_id` after its current generation."""
        with contextlib.suppress(WorkerError, ConnectionError):
            self._send({"op": "cancel", "id": job_id})

    async def stop(self, grace_s: float = 5.0) -> None:
        """Close stdin (the worker exits), then SIGKILL after `grace_s`."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None:
                with contextlib.suppress(Exception):
                    proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
        if self._log is not None:
            self._log.close()
            self._log = None


if __name__ == "__main__":
    sys.exit(main())
