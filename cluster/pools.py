"""Pools run `Work` on workers. The driver sees one interface, with or without Ray:

    free() -> int          how many more Work items can start now
    submit(work)           start one (only when free() > 0)
    busy() -> bool         whether any Work is started or waiting to be retried
    wait() -> [(work, outcome)]   block until at least one finishes; outcome is the losses [C]
                           (evaluate), the factors dict (compose), or the Exception it raised
    info() -> dict         BatchWorker.info() of a worker
    close()

`InlinePool` runs a `BatchWorker` in this process (no Ray: `--actors 0`, tests, benchmarks);
`actors.RayPool` spreads Work over Ray actors and re-runs the Work of an actor that dies.
"""

from __future__ import annotations

from .scheduler import Work
from .worker import BatchWorker


class WorkerLostError(RuntimeError):
    """Workers kept dying while running one Work (e.g. it needs more memory than they have)."""


def run_work(worker: BatchWorker, work: Work):
    """Execute one Work on a worker (shared by the inline pool and the Ray actor)."""
    if work.kind == "evaluate":
        return worker.evaluate(work.batch)
    return worker.compose(*work.compose)


class InlinePool:
    """One worker in this process; Work runs when `wait()` is called."""

    def __init__(self, worker: BatchWorker):
        self.worker = worker
        self._work: Work | None = None

    def free(self) -> int:
        return 0 if self._work is not None else 1

    def submit(self, work: Work) -> None:
        assert self._work is None, "InlinePool runs one Work at a time"
        self._work = work

    def busy(self) -> bool:
        return self._work is not None

    def wait(self):
        work, self._work = self._work, None
        try:
            out = run_work(self.worker, work)
        except Exception as e:  # noqa: BLE001 - reported per task by the driver
            out = e
        return [(work, out)]

    def info(self) -> dict:
        return self.worker.info()

    def close(self) -> None:
        pass  # the caller owns the worker
