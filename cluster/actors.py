"""Ray: the actor pool that adaptation and hub building share, and the evaluator actor.

`RayPool` runs work items on actors of one class, each a thin wrapper over a plain object with
`info() -> dict` and `run(work)`: `EvaluatorActor` (a `BatchWorker`, for adapt-batch) or
`cluster.hub_trainers.HubTrainer` (hub build). `ray_pool` starts or joins Ray around it.

Placement. Actors are spread over the cluster's nodes (Ray's SPREAD strategy) unless
`strategy="DEFAULT"`; each actor's `info()` names its node (`node_id`).

Faults. An actor that dies (its process crashed or was killed, `ray.kill`, its node lost)
surfaces as a RayActorError at once: Ray does not restart it, since a restart on a full
cluster would wait for resources that may never come back and hang the call. The pool
re-queues its Work on a live actor and starts a replacement (at most `max_replacements`),
which takes work only once it has loaded: the Batch carries its tasks' examples, so a fresh
process needs nothing else. A Work that kills workers `max_attempts` times comes back as
`WorkerLostError`, so the driver fails only its task(s). Work items need only an `attempts`
counter. The same holds while the pool starts: an actor whose process dies before it has
loaded is replaced from the same `max_replacements`. An actor whose constructor raises (a
missing model, a bad hub) is not: every try would fail alike, so the pool stops at once with
that error (`ClusterError`, the constructor's exception as its reason).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Literal

import ray
from ray.exceptions import RayError, RayTaskError

from lorahub_serve.cluster.pools import WorkerLostError, run_work
from lorahub_serve.cluster.scheduler import Work
from lorahub_serve.cluster.worker import BatchWorker
from lorahub_serve.errors import LorahubError


class ClusterError(LorahubError, RuntimeError):
    """The Ray side cannot run the job (no actor starts, all died, too few resources)."""


class EvaluatorActor:
    """One BatchWorker per actor process (wrapped with `ray.remote` by `RayPool`)."""

    def __init__(self, **worker_kwargs):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # N actors' loading bars would garble the driver's
        self.worker = BatchWorker(**worker_kwargs)

    def info(self) -> dict:
        return dict(self.worker.info(), node_id=node_id())

    def run(self, work: Work):
        return run_work(self.worker, work)


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int) -> Iterator[bool]:
    """Use the Ray already initialised in this process, join `address`, or start a local one
    with `num_cpus` CPUs (and stop it afterwards). Yields whether this is a local cluster."""
    if ray.is_initialized():
        yield address is None
        return
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield address is None
    finally:
        ray.shutdown()


def actor_resources(actors: int, cpus_per_actor: int | None) -> tuple[int, int]:
    """(num_cpus, num_gpus) for each actor, checked against the cluster's resources.

    One GPU per actor when the cluster has GPUs; CPUs: `cpus_per_actor`, else an even share
    (at least 1) of the cluster's CPUs.
    """
    res = ray.cluster_resources()
    total_cpu, total_gpu = int(res.get("CPU", 0)), int(res.get("GPU", 0))
    num_gpus = 1 if total_gpu >= 1 else 0
    num_cpus = cpus_per_actor or max(1, total_cpu // actors)
    if actors * num_cpus > total_cpu or actors * num_gpus > total_gpu:
        need = f"{actors} x ({num_cpus} CPU" + (f", {num_gpus} GPU)" if num_gpus else ")")
        raise ClusterError(f"--actors {actors} needs {need}, but the Ray cluster has {total_cpu} CPUs "
                           f"and {total_gpu} GPUs; use fewer actors or --cpus-per-actor")
    return num_cpus, num_gpus


@contextlib.contextmanager
def ray_pool(actor_cls: type, actor_kwargs: dict, actors: int, ray_address: str | None,
             cpus_per_actor: int | None = None, on_event: Callable[[str, dict], None] | None = None,
             what: str = "evaluator") -> Iterator[RayPool]:
    """A `RayPool` of `actors` actors in a Ray session (local, or joined at `ray_address`)."""
    with ray_session(ray_address, max(local_cpus(), actors * (cpus_per_actor or 1))):
        num_cpus, num_gpus = actor_resources(actors, cpus_per_actor)
        pool = RayPool(actors, actor_kwargs, num_cpus, num_gpus, on_event=on_event,
                       actor_cls=actor_cls, what=what)
        try:
            yield pool
        finally:
            pool.close()


class RayPool:
    """`actors` actors of `actor_cls`; runs work on free ones and re-runs the work of dead ones.

    Each actor is built as `actor_cls(**worker_kwargs, threads=num_cpus, device=...)`; `what`
    names them in events and errors ("evaluator", "trainer").
    """

    def __init__(self, actors: int, worker_kwargs: dict, num_cpus: int, num_gpus: int,
                 max_attempts: int = 3, max_replacements: int | None = None,
                 on_event: Callable[[str, dict], None] | None = None,
                 actor_cls: type | None = None, what: str = "evaluator",
                 strategy: Literal["SPREAD", "DEFAULT"] = "SPREAD", start_timeout: float = 600.0):
        if strategy not in ("SPREAD", "DEFAULT"):
            raise ValueError(f"strategy must be 'SPREAD' (actors over all nodes) or 'DEFAULT' "
                             f"(Ray's packing), got {strategy!r}")
        self.worker_kwargs = dict(worker_kwargs, threads=num_cpus,
                                  device="cuda" if num_gpus else worker_kwargs.get("device"))
        self.what = what
        self._cls = ray.remote(actor_cls or EvaluatorActor)
        self._options = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_restarts": 0,
                         "max_task_retries": 0, "scheduling_strategy": strategy}
        self.start_timeout = start_timeout  # most seconds to wait for an actor to load while none works
        self.max_attempts = max_attempts
        self.max_replacements = 2 * actors + 2 if max_replacements is None else max_replacements
        self.on_event = on_event or (lambda event, data: None)
        self._prefix = f"lorahub-{what}-{uuid.uuid4().hex[:8]}"
        self._count = 0
        self._actors: dict[str, ray.actor.ActorHandle] = {}
        self._free: list[str] = []
        self._in_flight: dict[ray.ObjectRef, tuple[str, Work]] = {}
        self._starting: dict[ray.ObjectRef, str] = {}  # info() calls of actors still loading -> name
        self._retry: list[Work] = []  # work waiting for an actor that has started
        self._infos: dict[str, dict] = {}  # info() of each actor that has loaded
        self._up = False  # start-up done: from then on a loaded replacement is an `actor_ready`
        self.failures = self.replacements = 0
        for _ in range(actors):
            self._launch()
        try:
            self._await_start()
        except BaseException:
            self.close()
            raise
        self._up = True
        self._info = [self._infos[name] for name in self._actors]
        self.on_event("actors", {"names": list(self._actors), "pids": [i["pid"] for i in self._info],
                                 "node_ids": [i.get("node_id") for i in self._info]})

    # -- the pool interface ------------------------------------------------------------------
    @property
    def where(self) -> str:
        return f"on {len(self._actors)} Ray actors"

    def free(self) -> int:
        return max(0, len(self._free) + len(self._starting) - len(self._retry))

    def busy(self) -> bool:
        return bool(self._in_flight or self._retry)

    def submit(self, work: Work) -> None:
        if not self._free:  # only replacements still loading: the first actor free takes it
            self._retry.append(work)
            return
        name = self._free.pop(0)
        self._in_flight[self._actors[name].run.remote(work)] = (name, work)

    def wait(self) -> list[tuple[Work, object]]:
        out: list[tuple[Work, object]] = []
        while not out and self.busy():  # a replacement that has loaded is no outcome: go on
            self._dispatch_retries()
            out = self._wait_some()
        self._dispatch_retries()
        return out

    def _wait_some(self) -> list[tuple[Work, object]]:
        refs = [*self._in_flight, *self._starting]
        if not refs:
            raise ClusterError(f"no {self.what} actor is left to run the remaining work")
        timeout = None if self._in_flight else self.start_timeout
        ready, rest = ray.wait(refs, num_returns=1, timeout=timeout)
        if not ready:
            raise ClusterError(f"no {self.what} actor is alive and no replacement started within "
                               f"{self.start_timeout:.0f} s; the Ray cluster may lack the resources "
                               f"({self._options['num_cpus']} CPU, {self._options['num_gpus']} GPU "
                               "per actor): add nodes or use fewer --actors")
        if rest:
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        out = []
        for ref in ready:
            if ref in self._starting:
                self._started(self._starting.pop(ref), ref)
                continue
            name, work = self._in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except RayTaskError as e:  # the Work raised; the actor lives on
                self._free.append(name)
                out.append((work, e.cause if isinstance(e.cause, Exception) else e))
            except RayError as e:  # the actor is gone (killed, out of memory, node lost)
                self._lost(name, e)
                work.attempts += 1
                if work.attempts >= self.max_attempts:
                    out.append((work, WorkerLostError(
                        f"{self.what} actors died {work.attempts} times running this work "
                        f"(last: {type(e).__name__}: {_first_line(e)}); it may need more memory")))
                else:
                    self._retry.append(work)
            else:
                self._free.append(name)
                out.append((work, result))
        return out

    def info(self) -> dict:
        return self._info[0]

    def close(self) -> None:
        for handle in self._actors.values():
            with contextlib.suppress(Exception):
                ray.kill(handle)
        self._actors.clear()

    # -- internals ---------------------------------------------------------------------------
    def _launch(self) -> str:
        """Start one actor; it joins `_free` once its `info()` answers (it has loaded)."""
        self._count += 1
        name = f"{self._prefix}-{self._count}"
        self._actors[name] = self._cls.options(name=name, **self._options).remote(
            **self.worker_kwargs)
        self._starting[self._actors[name].info.remote()] = name
        return name

    def _await_start(self) -> None:
        """Wait until every actor has loaded; one that dies on the way is replaced (`_lost`)."""
        while self._starting:
            ready, _ = ray.wait(list(self._starting), num_returns=1, timeout=self.start_timeout)
            if not ready:
                raise ClusterError(f"{len(self._starting)} {self.what} actor(s) did not load within "
                                   f"{self.start_timeout:.0f} s; the Ray cluster may lack the "
                                   f"resources ({self._options['num_cpus']} CPU, "
                                   f"{self._options['num_gpus']} GPU per actor)")
            for ref in ready:
                self._started(self._starting.pop(ref), ref)

    def _started(self, name: str, info_ref: ray.ObjectRef) -> None:
        """An actor answered `info()` (it has loaded), or died trying."""
        try:
            info = ray.get(info_ref)
        except RayError as e:
            if getattr(e, "actor_init_failed", False):  # its constructor raised: fatal, see above
                raise ClusterError(f"{_article(self.what)} {self.what} actor failed to start: "
                                   f"{init_error(e)}") from None
            self._lost(name, e)  # its process died (killed, out of memory, node lost)
            return
        self._free.append(name)
        self._infos[name] = info
        if self._up:
            self.on_event("actor_ready", {"name": name, "pid": info.get("pid"),
                                          "node_id": info.get("node_id")})

    def _lost(self, name: str, err: Exception) -> None:
        handle = self._actors.pop(name, None)
        with contextlib.suppress(Exception):
            ray.kill(handle)
        self.failures += 1
        self.on_event("actor_lost", {"name": name, "error": _first_line(err)})
        if self.replacements < self.max_replacements:
            self.replacements += 1
            self.on_event("actor_started", {"name": self._launch()})
        elif not self._actors:
            raise ClusterError(f"all {self.what} actors died ({self.failures} failures, "
                               f"{self.replacements} replacements); last error: {_first_line(err)}")

    def _dispatch_retries(self) -> None:
        while self._retry and self._free:
            self.submit(self._retry.pop(0))


def init_error(e: Exception) -> str:
    """The exception an actor's constructor raised, from Ray's error text: "Type: message".

    Ray keeps only the text of a creation task's error: its traceback, then the exception as
    "module.Type: message" (perhaps on several lines).
    """
    lines = [_ANSI.sub("", ln) for ln in str(e).splitlines()]
    frames = [i for i, ln in enumerate(lines) if ln.startswith("  File ")]
    if not frames:
        return _first_line(e)
    tail = lines[frames[-1] + 1:]
    while tail and (tail[0][:1].isspace() or not tail[0].strip()):  # the frame's code, ^^^ marks
        tail = tail[1:]
    text = " ".join(ln.strip() for ln in tail if ln.strip())
    kind, sep, msg = text.partition(": ")
    return f"{kind.rsplit('.', 1)[-1]}{sep}{msg}" if text else _first_line(e)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _first_line(e: Exception) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def node_id() -> str:
    """The Ray node this process runs on (hex id, as `ray.nodes()` names it)."""
    return ray.get_runtime_context().get_node_id()


def local_cpus() -> int:
    return os.cpu_count() or 1
