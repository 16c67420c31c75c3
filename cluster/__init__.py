"""Many tasks on many workers: Ray evaluator actors and the multi-task scheduler.

`run_adapt_batch(...)` (driver.py) adapts a list of tasks at once, packing their populations
into shared forward passes on `BatchWorker`s (worker.py) — in this process or in Ray actors
(actors.py, the only module that imports Ray, with adapt_worker.py: `serve --ray-address`'s
adaptation workers as actors). See docs/cluster.md.
"""

from __future__ import annotations

__all__ = ["Batch", "BatchWorker", "TaskSpec", "read_tasks_file", "run_adapt_batch"]


def __getattr__(name: str):  # lazy: `lorahub-serve --help` must not import torch or Ray
    if name == "run_adapt_batch":
        from lorahub_serve.cluster.driver import run_adapt_batch

        return run_adapt_batch
    if name in ("read_tasks_file", "TaskSpec"):
        from lorahub_serve.cluster import tasks

        return getattr(tasks, name)
    if name in ("BatchWorker", "Batch"):
        from lorahub_serve.cluster import worker

        return getattr(worker, name)
    raise AttributeError(f"module 'lorahub_serve.cluster' has no attribute {name!r}")
