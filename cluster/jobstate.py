"""Job state on disk, so a killed `adapt-batch` resumes where it stopped.

    STORE/.jobs/<job id>/job.json          the arguments that define the job (id = their hash)
    STORE/.jobs/<job id>/tasks/<name>.pkl  per task: status, evaluations, best so far and the
                                            pickled optimiser, rewritten after every generation
    STORE/.jobs/<job id>/report.json       the last run's report
    STORE/.jobs/<job id>/lock              held (flock) while a run of the job is alive

The job id hashes what decides the results (model, hub, search config, modules, rule), not the
task list or the number of actors: a task's saved state is reused only when its examples'
digest matches, so adding a task to the file or changing --actors still resumes the others.
Every file is written atomically (temporary file + os.replace). The pickles are this program's
own files: do not load a job folder you did not write.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from lorahub_serve.atomic import write_json_atomic
from lorahub_serve.cluster.scheduler import TaskRun
from lorahub_serve.engine.search import SearchConfig, SearchState
from lorahub_serve.errors import LorahubError
from lorahub_serve.formats import HUB_FILE

FORMAT = 1


class JobLockedError(LorahubError, RuntimeError):
    """Another live run of the same job holds its lock."""


def job_id(model: str, hub: Path, config: SearchConfig, modules, rule: str,
           truncate: bool = False) -> tuple[str, dict]:
    """(16-hex id, the arguments it hashes)."""
    hub = Path(hub).resolve()
    manifest = hub / HUB_FILE
    hub_digest = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.exists() else ""
    key = {"format": FORMAT, "model": str(model), "hub": str(hub), "hub_json_sha256": hub_digest,
           "search": asdict(config), "modules": modules, "rule": rule, "truncate": truncate}
    blob = json.dumps(key, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16], key


def _dump_atomic(path: Path, payload: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class JobJournal:
    """Reads and writes one job's state folder (see the module docstring)."""

    def __init__(self, folder: Path, key: dict):
        self.dir = Path(folder)
        (self.dir / "tasks").mkdir(parents=True, exist_ok=True)
        self._lock = open(self.dir / "lock", "a+")  # noqa: SIM115 - held open: it is the lock
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise JobLockedError(f"job folder {self.dir} is in use by another run of the same job; "
                                 "wait for it to finish (or stop it) before starting this one") from None
        job_file = self.dir / "job.json"
        if not job_file.exists():
            write_json_atomic(job_file, key)

    def close(self) -> None:
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def _path(self, name: str) -> Path:
        return self.dir / "tasks" / f"{name}.pkl"

    def load(self, name: str, digest: str) -> dict | None:
        """The saved record of task `name`, or None when absent or made from other examples."""
        path = self._path(name)
        if not path.exists():
            return None
        try:
            with open(path, "rb") as f:
                rec = pickle.load(f)
        except Exception:  # noqa: BLE001 - an unreadable record only costs a restart of the task
            return None
        if not isinstance(rec, dict) or rec.get("format") != FORMAT or rec.get("digest") != digest:
            return None
        return rec

    def save(self, run: TaskRun) -> None:
        """Record the task between generations (no candidates outstanding)."""
        s = run.state
        try:  # nevergrad's CMA pickles; NGOpt's threaded COBYLA does not: that task restarts
            state_bytes = pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL) if run.status == "running" else None
        except Exception:  # noqa: BLE001
            state_bytes = None
        _dump_atomic(self._path(run.name), {
            "format": FORMAT, "name": run.name, "digest": run.digest, "status": run.status,
            "error": run.error, "seconds": run.seconds, "module_idx": [int(i) for i in run.module_idx],
            "evaluations": s.evaluations, "best_weights": s.best_weights,
            "best_objective": s.best_objective, "best_loss": s.best_loss,
            "history": list(s.history), "optimizer_name": s.optimizer_name, "state": state_bytes,
            "selection": run.selection,  # how its modules were chosen (lorahub.json records it)
        })

    def write_report(self, report: dict) -> Path:
        path = self.dir / "report.json"
        write_json_atomic(path, report)
        return path


def restore_state(rec: dict, k: int, config: SearchConfig) -> SearchState:
    """The SearchState a record describes: the pickled optimiser when there is one, else (a
    finished task, or an optimiser that cannot pickle) the summary; unfinished -> fresh start."""
    if rec.get("state") is not None:
        return pickle.loads(rec["state"])
    state = SearchState(k, config)
    if rec["status"] in ("exporting", "done"):
        state.evaluations = rec["evaluations"]
        state.best_weights = None if rec["best_weights"] is None else np.asarray(rec["best_weights"])
        state.best_objective, state.best_loss = rec["best_objective"], rec["best_loss"]
        state.history = list(rec["history"])
        state.optimizer_name = rec["optimizer_name"]
    return state
