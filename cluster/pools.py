"""The pools adapt-batch's driver uses (the interface: `lorahub_serve.work_pool`), with or
without Ray. Work outcomes are the losses [C] (evaluate), the factors dict (compose), or the
Exception raised; `info()` is a worker's `BatchWorker.info()`.

`InlineBatchPool` runs a `BatchWorker` in this process (no Ray: `--actors 0`, tests, benchmarks);
`actors.RayPool` spreads Work over Ray actors and re-runs the Work of an actor that dies.
"""

from __future__ import annotations

from lorahub_serve import work_pool
from lorahub_serve.cluster.scheduler import Work
from lorahub_serve.cluster.worker import BatchWorker
from lorahub_serve.errors import LorahubError


class WorkerLostError(LorahubError, RuntimeError):
    """Workers kept dying while running one Work (e.g. it needs more memory than they have)."""


def run_work(worker: BatchWorker, work: Work):
    """Execute one Work on a worker (shared by the inline pool and the Ray actor)."""
    if work.kind == "evaluate":
        return worker.evaluate(work.batch)
    return worker.compose(*work.compose)


class InlineBatchPool(work_pool.InlinePool):
    """One worker in this process; Work runs when `wait()` is called."""

    def __init__(self, worker: BatchWorker):
        super().__init__(lambda work: run_work(worker, work))
        self.worker = worker

    def info(self) -> dict:
        return self.worker.info()
