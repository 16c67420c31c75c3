"""`run_adapt_batch`: adapt many tasks at once — one optimiser per task, shared batches, many workers.

The driver holds the per-task optimisers (a `Scheduler`), a pool of workers (Ray actors, or one
in-process worker when actors=0) and the job journal. Each generation of every task is cut into
batches that mix tasks (so their candidates share forward passes), results are told back in the
order asked, and after every told generation the task's state is saved; a finished task is
composed on a worker and written to STORE/<name> exactly as `adapt` writes it. With
`--select loss` (K < N) each task's first batch rows score every hub module alone on the
workers, and the task searches its K lowest from those losses (scheduler.py).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lorahub_serve.cluster.jobstate import JobJournal, job_id, restore_state
from lorahub_serve.cluster.pools import InlineBatchPool
from lorahub_serve.cluster.scheduler import Scheduler, TaskRun, Work
from lorahub_serve.cluster.tasks import TaskSpec, specs_from_pairs
from lorahub_serve.cluster.worker import BadTaskError, BatchWorker, examples_digest
from lorahub_serve.engine.adapt import AdaptResult, choice_extra, exported_spec
from lorahub_serve.engine.config import EngineConfig
from lorahub_serve.engine.export import composed_rank, write_adapter
from lorahub_serve.engine.hub import HubError, ModuleInfo, default_k, read_manifest, resolve_modules
from lorahub_serve.engine.job import finite
from lorahub_serve.engine.merge import MergeSpec, as_spec
from lorahub_serve.engine.search import SearchConfig, SearchState
from lorahub_serve.engine.selection import scores_every_module
from lorahub_serve.formats import is_adapter, read_lorahub_json

Callback = Callable[[str, dict], None]  # (event, data): actors, generation, task_done, task_failed, ...


def run_adapt_batch(model: str | Path, hub: str | Path, tasks: Iterable[tuple[str, Any]] | Sequence[TaskSpec],
                    out_store: str | Path | None, actors: int = 1, ray_address: str | None = None,
                    config: SearchConfig | None = None, modules: int | Sequence[str] | None = None,
                    *, engine_config: EngineConfig | None = None, job_dir: str | Path | None = None,
                    progress: bool = True, cpus_per_actor: int | None = None, max_batch: int = 256,
                    callback: Callback | None = None, engine=None,
                    export_rule: str | MergeSpec | None = None, **engine_options) -> dict:
    """Adapt every task; write each finished one to `out_store/<name>` (PEFT folder + lorahub.json).

    tasks: (name, examples) pairs — examples as records, `Example`s or a JSONL path — or
    `TaskSpec`s (`read_tasks_file`). actors: Ray actors (0: one worker in this process, no Ray).
    ray_address: join that cluster (default: a local one, stopped afterwards). job_dir: where
    the job state lives (default out_store/.jobs/<job id>; None with no store: no resume).
    max_batch: most candidates in one batch. engine: a loaded `Engine` to use when actors=0.
    engine_config: how the workers' engines compute (`EngineConfig`: rule, backend, dtype, token
    budget, truncate, allow_pickle); `engine_options` override its fields. export_rule: how each
    adapter composes the weights found (a rule name or `MergeSpec`, e.g. PEFT's ties; default the
    search's rule), checked against the chosen modules' ranks before anything runs.

    Returns the report (also written to <job dir>/report.json, less "results"): per task its
    status ("done", "done-earlier", "failed"), output folder, best loss, weights, evaluations
    and error; totals; and "results": name -> AdaptResult for the tasks finished in this run.
    """
    if not isinstance(actors, int) or actors < 0:
        raise ValueError(f"actors must be an integer >= 0 (0 runs in this process), got {actors!r}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1 candidate, got {max_batch}")
    engine_config = (engine_config or EngineConfig()).with_options(**engine_options)
    rule = engine_config.rule
    config = config or SearchConfig()
    if config.select == "retrieve":
        raise ValueError("--select retrieve is not supported by adapt-batch / --actors; use --select "
                         "loss (the default) or random, or adapt without --actors")
    if config.groups > 1:
        raise ValueError("--weights per-layer-group:G is not supported by adapt-batch / --actors; use "
                         "global weights, or adapt without --actors")
    specs = specs_from_pairs(tasks)
    hub_modules = read_manifest(Path(hub))
    if modules is None:  # resolved here, as the job id hashes what was chosen
        modules = default_k(len(hub_modules))
    plan = ModulePlan.of(hub_modules, modules, config)
    export = None if export_rule is None else as_spec(export_rule)
    if export is not None and plan.fixed is not None:  # e.g. a PEFT merge of mixed ranks: fail
        composed_rank([hub_modules[i].rank for i in plan.fixed], export)  # before any search
    if ray_address is None and engine is None:
        from lorahub_serve.models import resolve_model

        resolve_model(model)  # fail before starting anything when the model is missing
    store = Path(out_store) if out_store is not None else None
    journal = None
    if job_dir is not None or store is not None:
        jid, key = job_id(str(model), Path(hub), config, modules, rule, engine_config.truncate)
        journal = JobJournal(Path(job_dir) if job_dir else store / ".jobs" / jid, key)
    t0 = time.perf_counter()
    try:
        runs, entries = _prepare(specs, journal, plan, config, store, export)
        stats: dict = {"evaluations": 0, "actor_failures": 0, "results": {}}
        if runs:
            worker_kwargs = {"model": _local_path(model), "model_name": str(model),
                             "hub": str(Path(hub).resolve()), "engine_config": engine_config}
            with _pool(actors, ray_address, cpus_per_actor, worker_kwargs, engine, callback) as pool:
                _check_hub(pool.info(), hub_modules)
                loop = _Loop(runs, pool, store, journal, hub_modules, config, rule, max_batch,
                             callback, progress, export)
                stats = loop.run()
            for run in runs:
                entries[run.name] = loop.entry(run)
        entries = {s.name: entries[s.name] for s in specs}  # in the order given
        report = _report(entries, stats, journal, store, actors, ray_address, time.perf_counter() - t0)
        if journal is not None:
            journal.write_report({k: v for k, v in report.items() if k != "results"})
        return report
    finally:
        if journal is not None:
            journal.close()


def _local_path(model) -> str:
    """A model folder given relative to here, made absolute for workers with another cwd."""
    p = Path(model).expanduser()
    return str(p.resolve()) if p.exists() else str(model)


def _adapter_matches(folder: Path, weights, export: MergeSpec | None = None) -> bool:
    """Whether `folder` holds a complete export of these weights, composed by `export` (None:
    the search's rule), else it is written again."""
    meta = read_lorahub_json(folder) if is_adapter(folder) else None
    saved = meta.get("weights") if meta is not None else None
    if weights is None or saved is None or not np.allclose(saved, weights, rtol=0, atol=1e-12):
        return False
    try:
        return exported_spec(meta) == (export or MergeSpec(meta.get("search_rule", meta.get("rule"))))
    except ValueError:  # a record no export writes: export again
        return False


@dataclass(frozen=True)
class ModulePlan:
    """How the job's tasks get their K modules: `fixed` [K] for every task (random, named, or
    the whole hub), or with `fixed` None each task's K lowest losses alone among the hub's
    `hub_size` modules, scored on the workers (`--select loss`, K < N)."""

    k: int
    hub_size: int
    fixed: np.ndarray | None

    @classmethod
    def of(cls, hub_modules: list[ModuleInfo], modules: int | Sequence[str], config: SearchConfig) -> ModulePlan:
        n = len(hub_modules)
        if scores_every_module(config.select, modules, n):
            if modules < 1:
                raise HubError(f"--modules must be >= 1, got {modules}")
            return cls(modules, n, None)
        idx = np.asarray(resolve_modules(hub_modules, modules, config.seed), dtype=np.int64)
        return cls(len(idx), n, idx)

    def fresh(self, config: SearchConfig) -> tuple[str, np.ndarray, SearchState, dict]:
        """A new task's (status, module_idx, state, selection record)."""
        if self.fixed is None:
            return "selecting", np.empty(0, dtype=np.int64), SearchState(self.k, config), {}
        return "running", self.fixed, SearchState(self.k, config), {"select_evaluations": 0}


def _prepare(specs: list[TaskSpec], journal: JobJournal | None, plan: ModulePlan, config: SearchConfig,
             store: Path | None, export: MergeSpec | None = None) -> tuple[list[TaskRun], dict[str, dict]]:
    """TaskRuns to work on (fresh, resumed, or only left to export) and report entries of the
    tasks that need nothing (unusable examples, finished earlier). A resumed task keeps the
    modules its record names (chosen by loss, they differ from task to task)."""
    runs, entries = [], {}
    for spec in specs:
        if spec.error is not None:
            entries[spec.name] = {"status": "failed", "error": spec.error}
            continue
        digest = examples_digest(spec.examples)
        rec = journal.load(spec.name, digest) if journal is not None else None
        status = rec["status"] if rec else None
        if status in ("done", "exporting", "running"):
            state = restore_state(rec, plan.k, config)
            idx, selection = np.asarray(rec["module_idx"], dtype=np.int64), rec.get("selection", {})
        if status in ("done", "exporting"):
            if store is None or _adapter_matches(store / spec.name, state.best_weights, export):
                entries[spec.name] = _entry("done-earlier", spec.name, state, store, rec["seconds"])
                continue
            status = "exporting"
        elif status != "running":
            status, idx, state, selection = plan.fresh(config)
        runs.append(TaskRun(spec.name, spec.examples, digest, idx, state,
                            seconds=rec["seconds"] if rec else 0.0, status=status,
                            hub_size=plan.hub_size, selection=selection))
    return runs, entries


def _entry(status: str, name: str, state: SearchState, store: Path | None, seconds: float,
           resumed_at: int = 0, error: str | None = None) -> dict:
    entry = {"status": status, "out_dir": str(store / name) if store is not None else None,
             "best_loss": finite(state.best_loss), "best_objective": finite(state.best_objective),
             "weights": None if state.best_weights is None else [float(w) for w in state.best_weights],
             "evaluations": state.evaluations, "seconds": round(seconds, 3)}
    if resumed_at:
        entry["resumed_at_evaluation"] = resumed_at
    if error is not None:
        entry.update(status="failed", error=error, out_dir=None)
    return entry


class _Loop:
    """The event loop: keep workers busy, tell results back, save state, export finished tasks."""

    def __init__(self, runs: list[TaskRun], pool, store, journal, hub_modules, config, rule,
                 max_batch, callback, progress, export=None):
        self.pool, self.store, self.journal = pool, store, journal
        self.hub_modules, self.config, self.rule, self.max_batch = hub_modules, config, rule, max_batch
        self.callback = callback or (lambda event, data: None)
        self.info = pool.info()
        self.sched = Scheduler(runs, export=store is not None, checkpoint=self._checkpoint, export_rule=export)
        self.start_evals = {r.name: r.state.evaluations for r in runs}
        self.base_seconds = {r.name: r.seconds for r in runs}
        self.results: dict[str, AdaptResult] = {}
        self.t0 = time.perf_counter()
        total = sum(self.config.budget for _ in runs)
        self.bar = _bar(progress, total, sum(self.start_evals.values()))
        self.n_tasks = len(runs)

    def run(self) -> dict:
        try:
            while self.sched.active():
                self._fill()
                if not self.pool.busy():  # cannot happen while tasks are active: a bug
                    raise RuntimeError("adapt-batch: tasks are active but no work is pending")
                for work, outcome in self.pool.wait():
                    self._handle(work, outcome)
        finally:
            if self.bar is not None:
                self.bar.close()
        evals = sum(r.state.evaluations - self.start_evals[r.name] for r in self.sched.runs.values())
        return {"evaluations": evals, "actor_failures": getattr(self.pool, "failures", 0),
                "results": self.results}

    def entry(self, run: TaskRun) -> dict:
        status = "done" if run.status == "done" else run.status
        return _entry(status, run.name, run.state, self.store, run.seconds,
                      self.start_evals[run.name], run.error)

    # -- internals ---------------------------------------------------------------------------
    def _fill(self) -> None:
        while self.pool.free() > 0:
            share = math.ceil(self.sched.pending() / self.pool.free())
            work = self.sched.take(min(self.max_batch, max(1, share)))
            if work is None:
                return
            self.pool.submit(work)

    def _handle(self, work: Work, outcome) -> None:
        if isinstance(outcome, BaseException):
            if isinstance(outcome, BadTaskError) and outcome.task in work.tasks:
                self._fail(outcome.task, str(outcome))
                self.sched.requeue(work)  # the other tasks' candidates, without the bad one
            elif work.kind == "evaluate" and len(work.tasks) > 1:
                self.sched.isolate(work)  # find which task it was: one batch per task
            else:
                for task in work.tasks:
                    self._fail(task, f"{type(outcome).__name__}: {outcome}")
            return
        if work.kind == "compose":
            self._export(work.task, outcome)
            return
        for event, run in self.sched.complete(work, outcome):
            if event == "selected":
                self._selected(run)
            elif event == "select_failed":
                self._fail(run.name, run.error)
            elif event == "generation":
                self._progress()
                self.callback("generation", {"task": run.name, "evaluations": run.state.evaluations,
                                             "best_objective": run.state.best_objective})
            elif event == "searched" and self.store is None:
                self._finished(run)

    def _selected(self, run: TaskRun) -> None:
        names = [self.hub_modules[i].name for i in run.module_idx]
        if self.sched.export_rule is not None:  # e.g. a PEFT merge of these modules' mixed ranks
            try:
                composed_rank([self.hub_modules[i].rank for i in run.module_idx], self.sched.export_rule)
            except ValueError as e:
                self._fail(run.name, f"modules chosen by loss ({', '.join(names)}): {e}")
                return
        self.callback("task_selected", {"task": run.name, "modules": names})

    def _checkpoint(self, run: TaskRun) -> None:
        run.seconds = self.base_seconds[run.name] + time.perf_counter() - self.t0
        if run.selection.get("select_evaluations") and "select_seconds" not in run.selection:
            run.selection["select_seconds"] = run.seconds  # the selection pass has just ended
        if self.journal is not None:
            self.journal.save(run)

    def _export(self, name: str, factors: dict) -> None:
        run = self.sched.runs[name]
        result = self._result(run)
        try:
            write_adapter(self.store / name, factors, self.info["model_name"],
                          result.metadata(self.info["model_name"], self.info["fingerprint"], self.sched.export_rule))
        except Exception as e:  # noqa: BLE001 - one task's export failing must not stop the others
            self._fail(name, f"export to {self.store / name} failed: {type(e).__name__}: {e}")
            return
        result.out_dir = self.store / name
        self.sched.mark_done(name)
        self._checkpoint(run)
        self._finished(run, result)

    def _finished(self, run: TaskRun, result: AdaptResult | None = None) -> None:
        self.results[run.name] = result or self._result(run)
        self._progress()
        self.callback("task_done", {"task": run.name, "best_loss": run.state.best_loss,
                                    "out_dir": str(self.store / run.name) if self.store else None})

    def _fail(self, name: str, error: str) -> None:
        run = self.sched.fail(name, error)
        self._checkpoint(run)
        self._progress()
        self.callback("task_failed", {"task": name, "error": error})

    def _result(self, run: TaskRun) -> AdaptResult:
        result = AdaptResult.from_state(run.name, self.hub_modules, run.module_idx, run.state,
                                        self.config, self.rule, run.seconds)
        result.extra["dtype"] = self.info.get("dtype")  # as `Engine.adapt` records them
        result.extra.update(choice_extra(self.config.select, run.selection, run.seconds))
        return result

    def _progress(self) -> None:
        if self.bar is None:
            return
        runs = self.sched.runs.values()
        self.bar.update(sum(r.state.evaluations for r in runs) - self.bar.n)
        done = sum(r.status == "done" for r in runs)
        failed = sum(r.status == "failed" for r in runs)
        self.bar.set_postfix_str(f"tasks {done}/{self.n_tasks} done" + (f", {failed} failed" if failed else ""))


def _bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="adapt-batch", unit="eval", file=sys.stderr,
                dynamic_ncols=True)


@contextlib.contextmanager
def _pool(actors: int, ray_address, cpus_per_actor, worker_kwargs: dict, engine, callback):
    if actors == 0:
        worker = BatchWorker.from_engine(engine) if engine is not None else BatchWorker(**worker_kwargs)
        try:
            yield InlineBatchPool(worker)
        finally:
            if engine is None:
                worker.close()
        return
    from lorahub_serve.cluster.actors import (  # the only place Ray is imported
        EvaluatorActor,
        ray_pool,
    )

    with ray_pool(EvaluatorActor, worker_kwargs, actors, ray_address, cpus_per_actor, callback) as pool:
        yield pool


def _check_hub(info: dict, hub_modules: list[ModuleInfo]) -> None:
    """The workers must see the hub the driver chose modules from (same names and hashes)."""
    mine = [[m.name, m.sha256] for m in hub_modules]
    if [list(x) for x in info["hub_modules"]] != mine:
        raise RuntimeError("the workers loaded a different hub than the driver read (module names or "
                           "hashes differ); on a cluster, every node must see the same hub folder")


def _report(entries: dict, stats: dict, journal, store, actors, ray_address, seconds: float) -> dict:
    counts = {s: sum(e["status"] == s for e in entries.values()) for s in ("done", "done-earlier", "failed")}
    return {
        "job_dir": str(journal.dir) if journal is not None else None,
        "store": str(store) if store is not None else None,
        "actors": actors, "ray_address": ray_address, "tasks": entries, **counts,
        "evaluations": stats["evaluations"], "seconds": round(seconds, 3),
        "evals_per_second": round(stats["evaluations"] / seconds, 3) if seconds else None,
        "actor_failures": stats["actor_failures"], "results": stats["results"],
    }
