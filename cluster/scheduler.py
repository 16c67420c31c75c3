"""The driver's bookkeeping: one optimiser per task, generations cut into shared batches.

Each running task has one open generation (P candidates asked of its `SearchState`). Their
candidates wait in one queue, task after task; `take(limit)` cuts the next `Work` from it, so a
batch mixes the populations of several tasks and one task's generation may be split across
workers. A generation is told to its optimiser only when all its losses are in, in the order it
was asked, so the search is the same as `run_search` however candidates were split.
A task that chooses its modules by loss (`--select loss`, K < N) first has one "generation" of
N candidates, each hub module alone, packed into the same batches as the others' candidates;
its K lowest become its modules and their losses its search's start batch (told, not evaluated
again), as `Engine.adapt` does.
Nothing here knows about Ray; a `Work` is executed by a pool (pools.py, actors.py).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from lorahub_serve.cluster.worker import Batch
from lorahub_serve.data.examples import Example
from lorahub_serve.engine.search import Candidate, SearchState
from lorahub_serve.engine.selection import choose_by_loss

Status = Literal["selecting", "running", "exporting", "done", "failed"]
EVALUATING = ("selecting", "running")  # the statuses whose candidates are queued
Item = tuple[str, int, int]  # (task, generation number, position in the generation)


@dataclass
class TaskRun:
    """One task of the job: its data, its optimiser and where it stands."""

    name: str
    examples: tuple[Example, ...]
    digest: str
    module_idx: np.ndarray  # [K] indices into the hub (empty while selecting)
    state: SearchState
    seconds: float = 0.0  # wall time spent on this task (earlier runs of the job included)
    status: Status = "running"
    error: str | None = None
    generation: int = 0
    cands: list = field(default_factory=list)  # the open generation's nevergrad candidates
    losses: np.ndarray = field(default_factory=lambda: np.empty(0))  # [P]
    filled: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=bool))  # [P] known yet
    hub_size: int = 0  # selecting: N, the hub modules each scored alone
    selection: dict = field(default_factory=dict)  # lorahub.json's record of the choice


@dataclass
class Work:
    """A unit a pool runs: evaluate a batch, or compose a finished task's adapter."""

    kind: Literal["evaluate", "compose"]
    items: list[Item]
    batch: Batch | None = None
    task: str = ""  # compose: the task
    compose: tuple | None = None  # compose: (module_idx [K], weights [K], MergeSpec | None)
    attempts: int = 0  # times a worker died running it
    id: int = field(default_factory=itertools.count().__next__)

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(t for t, _, _ in self.items)) if self.items else [self.task]


Event = tuple[str, TaskRun]  # ("selected" | "select_failed" | "generation" | "searched", run)


class Scheduler:
    """Asks generations, hands out `Work`, tells losses back; `export` adds a compose step."""

    def __init__(self, runs: list[TaskRun], export: bool = True,
                 checkpoint: Callable[[TaskRun], None] | None = None, export_rule=None):
        self.runs = {r.name: r for r in runs}
        self.export = export
        self.export_rule = export_rule  # a MergeSpec for the compose steps (None: the search's rule)
        self.checkpoint = checkpoint  # called after each tell, before the next ask
        self.queue: deque[Item] = deque()
        self.priority: deque[Work] = deque()  # compose steps and isolated (single-task) batches
        for run in runs:
            if run.status == "running" and run.state.done:  # budget spent before a checkpoint
                run.status = "exporting" if export else "done"
            if run.status == "selecting":
                self._open_selection(run)
            elif run.status == "running":
                self._open(run)
            elif run.status == "exporting":
                self.priority.append(_compose_work(run, export_rule))

    # -- state -------------------------------------------------------------------------------
    def active(self) -> bool:
        return any(r.status in (*EVALUATING, "exporting") for r in self.runs.values())

    def pending(self) -> int:
        """Candidates (and steps) waiting to be handed out."""
        return len(self.queue) + len(self.priority)

    # -- handing out work ------------------------------------------------------------------
    def take(self, limit: int) -> Work | None:
        """The next Work: a priority step, else up to `limit` queued candidates (all tasks)."""
        if self.priority:
            return self.priority.popleft()
        items: list[Item] = []
        while self.queue and len(items) < limit:
            items.append(self.queue.popleft())
        return self._evaluate_work(items) if items else None

    def requeue(self, work: Work) -> None:
        """Put back a Work's still-needed candidates, ahead of the others."""
        if work.kind == "compose":
            if self.runs[work.task].status == "exporting":
                self.priority.appendleft(work)
            return
        live = [it for it in work.items if self._wanted(it)]
        self.queue.extendleft(reversed(live))

    def isolate(self, work: Work) -> None:
        """Split a failed multi-task batch into one batch per task, run before anything else."""
        by_task: dict[str, list[Item]] = {}
        for it in work.items:
            if self._wanted(it):
                by_task.setdefault(it[0], []).append(it)
        for items in by_task.values():
            w = self._evaluate_work(items)
            w.attempts = work.attempts
            self.priority.append(w)

    # -- results -----------------------------------------------------------------------------
    def complete(self, work: Work, losses: np.ndarray) -> list[Event]:
        """Record a batch's losses [C]; tell every generation that is now complete.

        Returns ("selected", run) when a task's modules are chosen ("select_failed" when its
        losses alone could not choose them: the task failed), ("generation", run) for each told
        generation and ("searched", run) when the task's budget is spent (its compose step is
        queued when exporting).
        """
        touched: dict[str, TaskRun] = {}
        for (task, gen, pos), loss in zip(work.items, np.asarray(losses, dtype=np.float64)):
            run = self.runs[task]
            if run.status not in EVALUATING or run.generation != gen or run.filled[pos]:
                continue  # a failed task, or a stale duplicate
            run.losses[pos], run.filled[pos] = loss, True
            touched[task] = run
        events: list[Event] = []
        for run in touched.values():
            if not run.filled.all():
                continue
            if run.status == "selecting":
                events.append(self._selected(run))
                if run.status == "running":
                    if self.checkpoint is not None:
                        self.checkpoint(run)
                    self._open(run)
                continue
            run.state.tell(run.cands, run.losses)
            _clear(run)
            events.append(("generation", run))
            if run.state.done:
                run.status = "exporting" if self.export else "done"
                events.append(("searched", run))
            if self.checkpoint is not None:  # between tell and ask: the state resumes exactly
                self.checkpoint(run)
            if run.status == "exporting":
                self.priority.append(_compose_work(run, self.export_rule))
            elif run.status == "running":
                self._open(run)
        return events

    def mark_done(self, name: str) -> None:
        self.runs[name].status = "done"

    def fail(self, name: str, error: str) -> TaskRun:
        """Fail one task alone: its queued candidates are dropped, its results ignored."""
        run = self.runs[name]
        run.status, run.error = "failed", error
        _clear(run)
        self.queue = deque(it for it in self.queue if it[0] != name)
        self.priority = deque(w for w in self.priority if name not in w.tasks)
        return run

    # -- internals ---------------------------------------------------------------------------
    def _open(self, run: TaskRun) -> None:
        """Ask the task's next generation and queue its candidates."""
        run.generation += 1
        run.cands = run.state.ask()
        run.losses = np.zeros(len(run.cands))
        run.filled = np.zeros(len(run.cands), dtype=bool)
        self.queue.extend((run.name, run.generation, i) for i in range(len(run.cands)))

    def _open_selection(self, run: TaskRun) -> None:
        """Queue every hub module alone: candidate m is module m at weight 1, written as a row
        of K (module m in every slot, weight 1 on the first) so it packs with search rows."""
        run.generation += 1
        alone = np.eye(run.state.k)[0]
        run.cands = [Candidate(alone) for _ in range(run.hub_size)]
        run.losses = np.zeros(run.hub_size)
        run.filled = np.zeros(run.hub_size, dtype=bool)
        self.queue.extend((run.name, run.generation, m) for m in range(run.hub_size))

    def _selected(self, run: TaskRun) -> Event:
        """The K lowest of the losses alone become the task's modules; a fresh search state
        holds their losses, so its start batch tells them instead of evaluating them again.
        A loss that is not finite fails the task alone ("select_failed", run.error says why)."""
        try:
            idx, chosen, record = choose_by_loss(run.losses, run.state.k)
        except ValueError as e:
            self.fail(run.name, f"choosing modules by their losses alone: {e}")
            return ("select_failed", run)
        run.module_idx = np.asarray(idx, dtype=np.int64)
        run.state = SearchState(run.state.k, run.state.config, known_onehot=chosen)
        run.selection = record
        run.status = "running"
        _clear(run)
        return ("selected", run)

    def _wanted(self, item: Item) -> bool:
        run = self.runs[item[0]]
        return (run.status in EVALUATING and run.generation == item[1]
                and not run.filled[item[2]])

    def _evaluate_work(self, items: list[Item]) -> Work:
        runs = [self.runs[t] for t, _, _ in items]
        weights = np.stack([np.asarray(r.cands[p].value, dtype=np.float64)
                            for r, (_, _, p) in zip(runs, items)])
        module_idx = np.stack([_row_modules(r, p) for r, (_, _, p) in zip(runs, items)]).astype(np.int64)
        examples = {r.name: r.examples for r in runs}
        batch = Batch(tuple(r.name for r in runs), module_idx, weights, examples,
                      contrast=runs[0].state.config.contrast)  # one search config per job
        return Work("evaluate", items, batch=batch)


def _row_modules(run: TaskRun, pos: int) -> np.ndarray:
    """[K] hub indices of candidate `pos`: the task's modules, or module `pos` while selecting."""
    return np.full(run.state.k, pos) if run.status == "selecting" else run.module_idx


def _clear(run: TaskRun) -> None:
    run.cands, run.losses, run.filled = [], np.empty(0), np.empty(0, dtype=bool)


def _compose_work(run: TaskRun, export_rule=None) -> Work:
    return Work("compose", [], task=run.name, compose=(run.module_idx, run.state.best_weights, export_rule))
