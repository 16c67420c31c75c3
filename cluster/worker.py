"""The plain evaluator behind each Ray actor: base model + hub stack loaded once, batches in.

A `Batch` holds C candidates, possibly of several tasks:
    tasks [C] task names; module_idx [C, K] int (indices into the hub); weights [C, K] float
plus the few-shot examples of every task it names, so that any worker (a fresh or restarted
one too) can evaluate it: registering a task is idempotent, keyed by a digest of its examples.
`BatchWorker.evaluate(batch)` returns [C] losses, one shared set of forward passes for all.
Nothing here imports Ray (see actors.py for the thin actor wrapper).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lorahub_serve.data.examples import Example
from lorahub_serve.errors import LorahubError


class BadTaskError(LorahubError, ValueError):
    """A task's examples cannot be evaluated (e.g. longer than the model's context)."""

    def __init__(self, task: str, message: str):
        super().__init__(message)
        self.task = task

    def __reduce__(self):  # keep `task` across pickling (Ray ships exceptions by pickle)
        return (BadTaskError, (self.task, str(self)))


def examples_digest(examples: Sequence[Example]) -> str:
    """sha256 of the examples' text: the identity of a task's data."""
    data = json.dumps([[e.input, e.output] for e in examples], ensure_ascii=False)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Batch:
    """C candidates to evaluate. tasks [C]; module_idx [C, K] int64; weights [C, K] float64."""

    tasks: tuple[str, ...]
    module_idx: np.ndarray
    weights: np.ndarray
    examples: dict[str, tuple[Example, ...]]  # every task named in `tasks`
    contrast: float = 0.0  # the option term's weight (engine/objective.py), the job's search config

    def __post_init__(self):
        c = len(self.tasks)
        if self.module_idx.shape != self.weights.shape or self.weights.shape[:1] != (c,):
            raise ValueError(f"batch: tasks [{c}], module_idx {self.module_idx.shape} and weights "
                             f"{self.weights.shape} must agree as [C], [C, K], [C, K]")
        missing = sorted(set(self.tasks) - set(self.examples))
        if missing:
            raise ValueError(f"batch: no examples for tasks {missing}")

    @property
    def size(self) -> int:
        return len(self.tasks)


class BatchWorker:
    """Holds an `Engine` (base model + all hub modules); evaluates `Batch`es of candidates.

    model: registry name or HF folder (`model_name` is what the exported metadata records, as
    `adapt` records the name it was given); hub: hub folder; engine_config: as `Engine` (its
    fields can also be given as keywords); device: e.g. "cuda" (default: where the model loads);
    threads: torch CPU threads.
    """

    def __init__(self, model: str | Path, hub: str | Path, engine_config=None, device: str | None = None,
                 threads: int | None = None, model_name: str | None = None, engine=None, **options):
        import torch

        if threads:
            torch.set_num_threads(threads)
        if engine is None:
            from lorahub_serve.engine.adapt import Engine

            engine = Engine(model, hub, engine_config, device=device, **options)
        if model_name is not None:
            engine.model_name = model_name
        self.engine = engine
        self._digests: dict[str, str] = {}

    @classmethod
    def from_engine(cls, engine) -> BatchWorker:
        """Wrap an already loaded `Engine` (in-process runs, tests)."""
        return cls(engine.model_name, "", engine=engine)

    def info(self) -> dict:
        """What the driver needs to check and label results: model, fingerprint, hub, device."""
        import torch

        e = self.engine
        return {"model_name": e.model_name, "fingerprint": e.fingerprint, "rule": e.rule,
                "hub_modules": [[m.name, m.sha256] for m in e.hub_modules],
                "device": str(e.evaluator.device), "dtype": e.dtype, "pid": os.getpid(),
                "threads": torch.get_num_threads()}

    def add_tasks(self, examples: dict[str, Sequence[Example]], contrast: float = 0.0) -> None:
        """Register tasks by name; a task already registered with the same examples (and
        contrast) is skipped.

        Raises `BadTaskError` naming the first task whose examples cannot be encoded.
        """
        for name, exs in examples.items():
            digest = f"{examples_digest(exs)}:{contrast}"
            if self._digests.get(name) == digest:
                continue
            try:
                self.engine.evaluator.add_task(name, list(exs), contrast=contrast)
            except ValueError as e:  # ExampleError, ExampleTooLongError
                self._digests.pop(name, None)
                raise BadTaskError(name, f"task {name!r}: {e}") from None
            self._digests[name] = digest

    def evaluate(self, batch: Batch) -> np.ndarray:
        """Losses [C] (few-shot cross-entropy, no L1 term) of the batch's candidates."""
        self.add_tasks(batch.examples, batch.contrast)
        # copies: arrays that arrive through Ray are read-only views, which torch warns about
        return self.engine.evaluator.losses(list(batch.tasks), np.array(batch.module_idx),
                                            np.array(batch.weights))

    def compose(self, module_idx: Sequence[int], weights: np.ndarray, export_rule=None) -> dict:
        """The composed adapter's factors, as `Engine.export` writes them, on the CPU.

        module_idx [K]; weights [K]; export_rule: a `MergeSpec` (PEFT's merges read the modules'
        files with the worker's base model), default the engine's rule.
        Returns layer -> (A [r', d_in], B [d_out, r']).
        """
        from lorahub_serve.engine.export import compose_factors

        factors = compose_factors(self.engine.stack, list(module_idx), np.array(weights),
                                  export_rule or self.engine.rule, model=self.engine.net,
                                  allow_pickle=self.engine.config.allow_pickle)
        return {k: (a.cpu(), b.cpu()) for k, (a, b) in factors.items()}

    def close(self) -> None:
        self.engine.close()
