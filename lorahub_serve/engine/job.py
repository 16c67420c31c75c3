"""One adaptation job on a warm `Engine`, reported as events: the serve command's worker process
(`serving/worker.py`) and its Ray actor (`cluster/adapt_worker.py`) both run jobs through here,
so neither imports the other.

Events (plain dicts, JSON-safe): `progress` after each search generation, then one of `done`,
`failed` or `cancelled`; see `serving/worker.py` for the protocol around them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from lorahub_serve.errors import LorahubError


class WorkerError(LorahubError, RuntimeError):
    """An adaptation worker failed to start, died, or broke the protocol."""


class JobCancelled(Exception):
    """Raised from a search's generation callback when its job was cancelled."""


def finite(x: float) -> float | None:
    """JSON has no NaN or inf: those are reported as None."""
    return float(x) if math.isfinite(x) else None


def run_job(engine, msg: dict, cancelled: set[str], emit: Callable[[dict], None]) -> None:
    """Adapt `msg["examples"]` into `msg["out"]` (budget, seed, modules, export as given), emitting events."""
    from lorahub_serve.engine.search import SearchConfig

    job_id = str(msg["id"])
    config = SearchConfig(**{k: msg[k] for k in ("budget", "seed") if msg.get(k) is not None})

    def on_generation(state) -> None:
        if job_id in cancelled:
            raise JobCancelled
        emit({"event": "progress", "id": job_id, "evaluations": state.evaluations,
              "budget": config.budget, "best_loss": finite(state.best_loss)})

    if job_id in cancelled:
        emit({"event": "cancelled", "id": job_id})
        return
    modules = msg.get("modules")
    try:
        from lorahub_serve.engine.merge import MergeSpec

        export = MergeSpec(**msg["export"]) if msg.get("export") else None
        result = engine.adapt(msg["examples"], task=job_id, config=config, out=Path(msg["out"]),
                              modules=tuple(modules) if isinstance(modules, list) else modules,
                              progress=False, on_generation=on_generation, export_rule=export)
    except JobCancelled:
        emit({"event": "cancelled", "id": job_id})
        return
    except Exception as e:  # noqa: BLE001 - reported to the parent as the job's error
        emit({"event": "failed", "id": job_id, "error": f"{type(e).__name__}: {e}"})
        return
    finally:
        engine.evaluator.remove_task(job_id)
    emit({"event": "done", "id": job_id, "loss": finite(result.best_loss),
          "evaluations": result.evaluations, "seconds": round(result.seconds, 3)})
