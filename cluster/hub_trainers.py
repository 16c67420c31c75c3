"""Ray: hub modules trained in parallel, one task per actor call.

Each actor loads the base model once and trains task after task (PEFT wraps and unwraps it per
module). A call returns the module's files as bytes (`TrainedModule`), and the driver writes them,
so this works on a multi-node cluster without a shared filesystem, and a module is on disk (and
in `hub.json`) the moment it is done: a killed build resumes from there.

An actor that dies mid-module is restarted by Ray and its call re-run (`max_restarts`,
`max_task_retries`); a task whose call keeps failing is reported and the build goes on.
"""

from __future__ import annotations

from collections.abc import Callable

import ray
from ray.exceptions import RayActorError, RayError

from .actors import actor_resources, local_cpus, ray_session


class HubTrainer:
    """Wrapped with `ray.remote` by `train_on_ray`."""

    def __init__(self, model: str, threads: int):
        import torch
        from transformers.utils import logging as hf_logging

        from ..models import load_base, resolve_model

        hf_logging.disable_progress_bar()
        torch.set_num_threads(threads)
        self.net, self.tok = load_base(resolve_model(model))

    def ready(self) -> bool:
        return True

    def train(self, task: str, cfg):
        from ..hub_build import train_module

        return train_module(self.net, self.tok, task, cfg)


def train_on_ray(model: str, candidates: list[str], missing: int, cfg, on_result: Callable[[object], bool],
                 actors: int, ray_address: str | None, cpus_per_actor: int | None = None) -> int:
    """Train candidates in order on `actors` actors until `missing` modules are done.

    `on_result(TrainedModule) -> bool` (True: a module was recorded) runs in this process as
    each call finishes. Returns the number of modules recorded.
    """
    from ..hub_build import TrainedModule

    with ray_session(ray_address, num_cpus=local_cpus()):
        num_cpus, num_gpus = actor_resources(actors, cpus_per_actor)
        cls = ray.remote(HubTrainer).options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=1,
                                             max_task_retries=1)
        handles = [cls.remote(model, num_cpus) for _ in range(actors)]
        try:
            ray.get([h.ready.remote() for h in handles])
            queue, free, running, recorded = list(candidates), list(handles), {}, 0
            while running or (queue and recorded + len(running) < missing):
                while free and queue and recorded + len(running) < missing:
                    h, task = free.pop(), queue.pop(0)
                    running[h.train.remote(task, cfg)] = (h, task)
                [ref], _ = ray.wait(list(running), num_returns=1)
                h, task = running.pop(ref)
                try:
                    mod = ray.get(ref)
                    free.append(h)
                except RayError as e:  # the call failed, or its actor died twice: skip this task
                    if isinstance(e, RayActorError):  # gone for good: a fresh actor takes its place
                        ray.kill(h)
                        handles.remove(h)
                        h = cls.remote(model, num_cpus)
                        handles.append(h)
                    free.append(h)
                    mod = TrainedModule(task, skipped=f"training failed on the cluster: {str(e).splitlines()[0]}")
                recorded += on_result(mod)
            return recorded
        finally:
            for h in handles:
                ray.kill(h)
