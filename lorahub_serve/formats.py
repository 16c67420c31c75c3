"""The on-disk formats, defined once: adapter folders, hub folders, and names that become folders.

Light on purpose (json, re, pathlib only): serving imports it and must not import torch.

- An adapter folder is a PEFT LoRA: `ADAPTER_CONFIG` and `ADAPTER_WEIGHTS` (safetensors; the
  pickled `PICKLED_WEIGHTS` are refused unless trusted), plus `LORAHUB_FILE` (provenance: base
  model and its fingerprint, modules, weights, search) for adapters made here. Tensor keys are
  `PEFT_PREFIX + "<layer>.lora_A.weight"` / `".lora_B.weight"` (`peft_key`, `peft_layer`).
- A hub folder holds `HUB_FILE`, {"format", "base_model", "modules": [{"name", "path", ...}]},
  and one adapter folder per module (`path` relative to the hub).
- A name (a served adapter, a batch job's task) is also a folder: `NAME_RULE`, `valid_name`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from lorahub_serve.atomic import write_json_atomic
from lorahub_serve.errors import LorahubError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLED_WEIGHTS = ("adapter_model.bin", "adapter_model.pt")
LORAHUB_FILE = "lorahub.json"
LORAHUB_FORMAT = 1
HUB_FILE = "hub.json"
HUB_FORMAT = 1
PEFT_PREFIX = "base_model.model."
# vLLM's accepted --max-lora-rank values (vllm.config.lora.MaxLoRARanks): the ranks a served
# adapter is padded to.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

MAX_NAME_LENGTH = 64
NAME_RULE = f"1-{MAX_NAME_LENGTH} letters, digits, '.', '_' or '-', not starting with '.'"
# Not starting with '.': never `.`, `..` or a hidden folder (the store's `.jobs/`); no `/`.
_NAME = re.compile(rf"[A-Za-z0-9_-][A-Za-z0-9._-]{{0,{MAX_NAME_LENGTH - 1}}}")


class HubError(LorahubError, ValueError):
    """A hub or adapter is unusable with this base model; the message says which and why."""


def valid_name(name: object) -> bool:
    """Whether `name` follows `NAME_RULE` (and so is safe as one folder name)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def peft_key(layer: str, which: str) -> str:
    """The PEFT tensor key of factor `which` ("A" or "B") of `layer` (a base-model module path)."""
    return f"{PEFT_PREFIX}{layer}.lora_{which}.weight"


def peft_layer(key: str) -> tuple[str, str]:
    """'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' -> (layer path, 'A');
    ("", "") for a key that is not a LoRA factor."""
    for which in ("A", "B"):
        marker = f".lora_{which}."
        if marker in key:
            return key.split(marker)[0].removeprefix(PEFT_PREFIX), which
    return "", ""


def is_adapter(folder: Path) -> bool:
    """Whether `folder` holds a PEFT adapter's config and safetensors weights."""
    folder = Path(folder)
    return (folder / ADAPTER_CONFIG).is_file() and (folder / ADAPTER_WEIGHTS).is_file()


def read_hub_json(hub_dir: Path, missing_ok: bool = False) -> dict | None:
    """`hub_dir/hub.json`, checked: a dict whose "modules" entries each have a "name" and a "path".

    A missing file gives None (or, with `missing_ok`, an empty manifest to fill); an unreadable or
    malformed one raises `HubError` naming what is wrong.
    """
    path = Path(hub_dir) / HUB_FILE
    if not path.exists():
        return {"format": HUB_FORMAT, "modules": []} if missing_ok else None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise HubError(f"{path} is not readable JSON ({e}); rebuild it with `lorahub-serve hub build` "
                       "or remove it to use every adapter sub-folder") from None
    entries = data.get("modules") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise HubError(f"{path} has no \"modules\" list; expected {{\"modules\": [{{\"name\", \"path\"}}, ...]}}")
    for i, e in enumerate(entries):
        missing = [k for k in ("name", "path") if not (isinstance(e, dict) and isinstance(e.get(k), str))]
        if missing:
            raise HubError(f"{path}: modules[{i}] lacks {missing} (each entry needs a name and a path)")
    return data


def write_hub_json(hub_dir: Path, manifest: dict) -> None:
    """Rewrite `hub_dir/hub.json` atomically (readers never see half a manifest)."""
    write_json_atomic(Path(hub_dir) / HUB_FILE, manifest)


def read_lorahub_json(folder: Path) -> dict | None:
    """An adapter's `lorahub.json`, or None when it is missing or unreadable (it is provenance
    only: vLLM never reads it, so a broken one must not make the adapter unusable)."""
    try:
        meta = json.loads((Path(folder) / LORAHUB_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def write_lorahub_json(folder: Path, meta: dict) -> None:
    """Write an adapter's `lorahub.json` atomically."""
    write_json_atomic(Path(folder) / LORAHUB_FILE, meta)
