"""`lorahub-serve hub centroids`: each module's input centroid, for `adapt --select retrieve`.

A module's centroid is the base model's mean final hidden state over its training inputs (the
first `n_inputs` examples of its source task). Stored beside `hub.json` in
`centroids.safetensors` (name -> [hidden]); modules already there are skipped, so it resumes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path


def task_inputs(task: str, n: int) -> list[str]:
    """The first `n` inputs of a module's source task, whatever its source."""
    from lorahub_serve.data import tasks

    return [e.input for e in tasks.load_task(task)[:n]]


def compute_centroids(model: str, hub_dir: Path, n_inputs: int = 32,
                      inputs_of: Callable[[str, int], Sequence[str]] = task_inputs,
                      log=print) -> int:
    """Centroids of the hub's modules that have none yet; returns how many were computed.
    `inputs_of(source_task, n)` gives a module's training inputs (default: its task's)."""
    from safetensors.numpy import load_file
    from tqdm.auto import tqdm

    from lorahub_serve.engine.selection import CENTROIDS_FILE, input_centroid, write_centroids
    from lorahub_serve.formats import read_hub_json
    from lorahub_serve.models import load_base, resolve_model

    hub_dir = Path(hub_dir)
    manifest = read_hub_json(hub_dir)
    if manifest is None:
        raise FileNotFoundError(f"{hub_dir} has no hub.json: not a hub folder")
    path = hub_dir / CENTROIDS_FILE
    have = set(load_file(str(path))) if path.exists() else set()
    todo = [m for m in manifest["modules"] if m["name"] not in have]
    if not todo:
        log(f"[hub] every module of {hub_dir} has a centroid")
        return 0
    net, tok = load_base(resolve_model(model))
    table = {}
    for m in tqdm(todo, desc="centroids", unit="module"):
        table[m["name"]] = input_centroid(net, tok, list(inputs_of(m["source_task"], n_inputs)))
        if len(table) % 16 == 0:
            write_centroids(hub_dir, table)
    write_centroids(hub_dir, table)
    return len(table)
