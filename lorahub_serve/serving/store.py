"""The adapter store: a folder of PEFT LoRA folders, one per served name.

`STORE/NAME/` holds `adapter_config.json` and `adapter_model.safetensors` (and, for adapters made
here, `lorahub.json`). Before vLLM sees an adapter it is inspected here, cheaply (JSON and the
safetensors headers only, no tensor is read), and refused with a message that says what is wrong:

- only safetensors weights are accepted (no pickled `.bin`/`.pt`);
- its rank must not exceed the server's `--max-lora-rank`;
- it must fit the served base model: every adapted module must exist in the base model with
  matching input/output sizes, and the `base_model_sha256` that `lorahub-serve adapt` records in
  `lorahub.json`, when present, must equal the base folder's
  (`lorahub_serve.models.folder_fingerprint`).

Nothing here imports vLLM, so the checks are tested without a server.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from lorahub_serve.errors import LorahubError
from lorahub_serve.formats import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    PICKLED_WEIGHTS,
    peft_layer,
    read_lorahub_json,
)
from lorahub_serve.serving.names import AdapterNameError, adapter_dir, check_name, inside

_MAX_HEADER = 64 << 20  # a safetensors header larger than this is not an adapter's


class AdapterRefused(LorahubError, ValueError):
    """An adapter exists in the store but cannot be served; the message says why and what to do."""


@dataclass(frozen=True)
class AdapterInfo:
    """A servable adapter. `modules`: base-model module names it adapts."""

    name: str
    path: Path
    rank: int
    modules: tuple[str, ...]


def read_safetensors_header(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, from a safetensors file's header (the tensors are not read)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path.name} is not a safetensors file (shorter than 8 bytes)")
        (size,) = struct.unpack("<Q", raw)
        if size > _MAX_HEADER:
            raise ValueError(f"{path.name} is not a safetensors file (header of {size} bytes)")
        header = json.loads(f.read(size))
    return {k: list(v["shape"]) for k, v in header.items() if k != "__metadata__"}


@dataclass(frozen=True)
class BaseModelShapes:
    """Weight shapes of the served base model (`[out, in]` for linear layers), by weight name."""

    shapes: dict[str, list[int]]
    fingerprint: str | None = None

    @classmethod
    def from_folder(cls, folder: Path) -> BaseModelShapes:
        from lorahub_serve.models import folder_fingerprint

        folder = Path(folder)
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"base model folder {folder} has no *.safetensors weights")
        shapes: dict[str, list[int]] = {}
        for f in files:
            shapes.update(read_safetensors_header(f))
        return cls(shapes, folder_fingerprint(folder))


class AdapterStore:
    """Look up, list and vet the adapters of one store folder for one base model."""

    def __init__(self, root: Path, base: BaseModelShapes, max_rank: int):
        self.root = Path(root).resolve()
        self.base = base
        self.max_rank = max_rank
        if not self.root.is_dir():
            raise FileNotFoundError(f"adapter store {self.root} is not a folder; create it first")

    def remove(self, name: str) -> bool:
        """Remove adapter `name`: renamed away first (gone in one step for readers), then deleted.
        False when there is none. vLLM's copy is unloaded by the caller (`unload_from_vllm`)."""
        import os
        import shutil
        import uuid

        folder = self.folder(name)
        if not folder.is_dir():
            return False
        doomed = folder.with_name(f".{name}.deleted-{uuid.uuid4().hex[:8]}")
        os.rename(folder, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        return True

    def folder(self, name: str) -> Path:
        """The folder for `name` (raises `AdapterNameError` for a bad name)."""
        return adapter_dir(self.root, name)

    def exists(self, name: str) -> bool:
        """Whether an adapter (servable or not) is stored under `name`."""
        return (self.folder(name) / ADAPTER_CONFIG).is_file()

    def names(self) -> list[str]:
        """Names of stored adapters (valid names, an adapter_config.json, inside the store)."""
        out = []
        for child in sorted(self.root.iterdir()):
            try:
                check_name(child.name)
            except AdapterNameError:
                continue  # hidden folders (.jobs, atomic-write temporaries) and stray files
            if (child / ADAPTER_CONFIG).is_file() and inside(self.root, child):
                out.append(child.name)
        return out

    def servable(self) -> list[AdapterInfo]:
        """Every stored adapter that passes `inspect`; refused ones are skipped."""
        out = []
        for name in self.names():
            try:
                info = self.inspect(name)
            except (AdapterRefused, AdapterNameError):
                continue
            if info is not None:
                out.append(info)
        return out

    def inspect(self, name: str) -> AdapterInfo | None:
        """`AdapterInfo` for a servable adapter, None if nothing is stored under `name`.

        Raises `AdapterNameError` for a bad name and `AdapterRefused` for an unservable adapter.
        """
        folder = self.folder(name)
        config_path = folder / ADAPTER_CONFIG
        if not config_path.is_file():
            return None
        weights = folder / ADAPTER_WEIGHTS
        for path in (config_path, weights):
            if path.exists() and not inside(self.root, path):
                raise AdapterRefused(f"adapter {name!r}: {path.name} links outside the store; refused")
        if not weights.is_file():
            pickled = [p for p in PICKLED_WEIGHTS if (folder / p).exists()]
            what = f"only {pickled[0]} (pickle)" if pickled else "no weights"
            raise AdapterRefused(
                f"adapter {name!r} has {what}; only {ADAPTER_WEIGHTS} is loaded - save it with "
                "safe_serialization=True"
            )
        config = self._config(name, config_path)
        shapes = self._shapes(name, weights)
        rank = max([_config_rank(config)] + [s[0] for k, s in shapes.items() if ".lora_A." in k])
        if rank > self.max_rank:
            raise AdapterRefused(
                f"adapter {name!r} has rank {rank}, above this server's --max-lora-rank "
                f"{self.max_rank}; restart serve with a larger --max-lora-rank or use a "
                "lower-rank adapter"
            )
        modules = self._check_fits(name, shapes)
        self._check_fingerprint(name, folder)
        return AdapterInfo(name, folder, rank, modules)

    @staticmethod
    def _config(name: str, path: Path) -> dict:
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise AdapterRefused(f"adapter {name!r}: unreadable {ADAPTER_CONFIG} ({e})") from None
        if not isinstance(config, dict) or config.get("peft_type") != "LORA":
            raise AdapterRefused(f"adapter {name!r} is not a PEFT LoRA (peft_type must be 'LORA')")
        return config

    @staticmethod
    def _shapes(name: str, path: Path) -> dict[str, list[int]]:
        try:
            shapes = read_safetensors_header(path)
        except (OSError, ValueError) as e:
            raise AdapterRefused(f"adapter {name!r}: unreadable {ADAPTER_WEIGHTS} ({e})") from None
        if not any(".lora_A." in k for k in shapes):
            raise AdapterRefused(f"adapter {name!r}: {ADAPTER_WEIGHTS} holds no lora_A weights")
        return shapes

    def _check_fits(self, name: str, shapes: dict[str, list[int]]) -> tuple[str, ...]:
        """Every lora_A/lora_B pair must match a base linear layer's [out, in]."""
        modules = []
        for key, a_shape in sorted(shapes.items()):
            module, which = peft_layer(key)
            if which != "A":
                continue
            b_shape = shapes.get(key.replace(".lora_A.", ".lora_B."))
            base = self.base.shapes.get(f"{module}.weight")
            if base is None:
                raise AdapterRefused(
                    f"adapter {name!r} adapts {module!r}, which this base model does not have: "
                    "it was made for another base model"
                )
            if len(base) != 2 or b_shape is None or a_shape[1] != base[1] or b_shape[0] != base[0]:
                raise AdapterRefused(
                    f"adapter {name!r} does not fit {module!r} of this base model (layer "
                    f"[out, in] = {base}, adapter A {a_shape}, B {b_shape}): it was made for "
                    "another base model"
                )
            modules.append(module)
        return tuple(modules)

    def _check_fingerprint(self, name: str, folder: Path) -> None:
        meta = read_lorahub_json(folder) if self.base.fingerprint is not None else None
        if meta is None:
            return  # none, or unreadable: lorahub.json is provenance only; vLLM never reads it
        want = meta.get("base_model_sha256")
        if want and want != self.base.fingerprint:
            made_for = meta.get("base_model", "another model")
            raise AdapterRefused(
                f"adapter {name!r} was made for another base model ({made_for!r}; its lorahub.json "
                "base_model_sha256 differs from the served model's)"
            )


def _config_rank(config: dict) -> int:
    ranks = [config.get("r") or 0]
    ranks += [v for v in (config.get("rank_pattern") or {}).values() if isinstance(v, int)]
    return max(int(r) for r in ranks)


async def unload_from_vllm(app, names) -> None:
    """Forget removed adapters in vLLM (`app`: the server's ASGI app), so their names are no
    longer served from memory; an adapter vLLM never loaded is skipped."""
    import contextlib

    from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

    models = app.state.openai_serving_models
    for name in names:
        if name in models.lora_requests:
            with contextlib.suppress(Exception):
                await models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=name))
