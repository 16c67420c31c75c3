"""Ray: hub modules trained in parallel, one task per actor call, on the shared `RayPool`.

`trainer_pool(model, actors)` is what `hub_build.build_hub(..., trainers=...)` takes for
`hub build --actors N`. Each actor loads the base model once and trains task after task (PEFT
wraps and unwraps it per module). A call returns the module's files as bytes (`TrainedModule`)
and the build writes them, so this works on a multi-node cluster without a shared filesystem,
and a module is on disk (and in `hub.json`) the moment it is done: a killed build resumes there.

Faults are the pool's (`cluster/actors.py`): an actor that dies (crashed, killed, node lost) is
replaced and its task re-queued on a live one; a task whose training raises, or that keeps
killing actors, comes back as an exception and the build reports it as skipped.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from lorahub_serve.cluster.actors import RayPool, node_id, ray_pool


class HubTrainer:
    """One base model per actor process (wrapped with `ray.remote` by `RayPool`).

    device: what the pool reserved; training runs on CPU (`train_lora` builds CPU batches).
    """

    def __init__(self, model: str, threads: int, device: str | None = None):
        import torch
        from transformers.utils import logging as hf_logging

        from lorahub_serve.models import load_base, resolve_model

        hf_logging.disable_progress_bar()
        torch.set_num_threads(threads)
        self.net, self.tok = load_base(resolve_model(model))

    def info(self) -> dict:
        return {"pid": os.getpid(), "node_id": node_id()}

    def run(self, work):
        """Train `work.task` with `work.cfg` (a `hub_build.TrainWork`); returns a TrainedModule."""
        from lorahub_serve.hub.build import train_module

        return train_module(self.net, self.tok, work.task, work.cfg, examples=work.examples)


@contextlib.contextmanager
def trainer_pool(model: str, actors: int, ray_address: str | None = None,
                 cpus_per_actor: int | None = None) -> Iterator[RayPool]:
    """`actors` HubTrainers on a local Ray cluster (stopped afterwards) or the one at `ray_address`."""
    with ray_pool(HubTrainer, {"model": model}, actors, ray_address, cpus_per_actor,
                  what="trainer") as pool:
        yield pool
