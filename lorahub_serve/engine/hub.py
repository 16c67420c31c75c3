"""A hub of N LoRA modules for one base model, loaded as per-layer stacks of factors.

On disk a hub is a folder with `hub.json` and one PEFT adapter folder per module. In memory,
for every adapted linear layer `name`:
    lora_a[name]: [N, r, d_in]     lora_b[name]: [N, d_out, r]
with each module's scaling (alpha/r, or alpha/sqrt(r) for rsLoRA) folded into B and smaller
ranks zero-padded to the largest. A module that does not adapt a layer has zeros there.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from lorahub_serve.formats import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    PICKLED_WEIGHTS,
    HubError,
    peft_layer,
    read_hub_json,
)


@dataclass(frozen=True)
class ModuleInfo:
    name: str
    path: Path
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    source_task: str = ""
    sha256: str = ""
    use_rslora: bool = False

    @property
    def scaling(self) -> float:
        return self.alpha / (self.rank ** 0.5 if self.use_rslora else self.rank)


def read_adapter_config(folder: Path) -> dict:
    cfg_path = Path(folder) / ADAPTER_CONFIG
    if not cfg_path.exists():
        raise HubError(f"{folder}: not a PEFT adapter (no {ADAPTER_CONFIG})")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise HubError(f"{cfg_path}: invalid JSON ({e.msg})") from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise HubError(f"{folder}: peft_type {cfg.get('peft_type')!r} is not LORA")
    for key in ("r", "lora_alpha"):
        if not isinstance(cfg.get(key), (int, float)) or cfg[key] <= 0:
            raise HubError(f"{cfg_path}: {key!r} must be a positive number, got {cfg.get(key)!r}")
    return cfg


def module_from_folder(folder: Path, name: str | None = None, **extra) -> ModuleInfo:
    cfg = read_adapter_config(folder)
    targets = cfg.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    return ModuleInfo(name=name or Path(folder).name, path=Path(folder), rank=int(cfg["r"]),
                      alpha=float(cfg["lora_alpha"]), target_modules=tuple(sorted(targets)),
                      use_rslora=bool(cfg.get("use_rslora", False)), **extra)


def read_manifest(hub_dir: Path) -> list[ModuleInfo]:
    """Modules listed in `hub.json`, or every adapter sub-folder when there is no manifest."""
    hub_dir = Path(hub_dir)
    if not hub_dir.is_dir():
        raise HubError(f"hub {hub_dir} does not exist or is not a folder")
    manifest = read_hub_json(hub_dir)
    if manifest is not None:
        mods = [module_from_folder(hub_dir / e["path"], e["name"], source_task=e.get("source_task", ""),
                                   sha256=e.get("sha256", "")) for e in manifest["modules"]]
    else:
        folders = sorted(p.parent for p in hub_dir.rglob(ADAPTER_CONFIG))
        mods = [module_from_folder(f) for f in folders]
    if not mods:
        raise HubError(f"hub {hub_dir} has no modules (no hub.json entries or adapter folders)")
    return mods


DEFAULT_K = 20  # the paper's K


def default_k(n_modules: int) -> int:
    """K when none is given: the paper's 20, or the whole hub when it is smaller."""
    return min(DEFAULT_K, n_modules)


def resolve_modules(hub_modules: list[ModuleInfo], modules: int | Sequence[str] | None,
                    seed: int) -> list[int]:
    """The task set-up's module choice, the same for adapt, adapt-batch and eval: positions in
    the hub of `modules` (names), or of K seeded-random ones (an int; None: `default_k`)."""
    if modules is None:
        modules = default_k(len(hub_modules))
    chosen = select_modules(hub_modules, list(modules) if isinstance(modules, (list, tuple)) else modules, seed)
    pos = {m.name: i for i, m in enumerate(hub_modules)}
    return [pos[m.name] for m in chosen]


def select_modules(modules: list[ModuleInfo], k: int | list[str] | None, seed: int = 0) -> list[ModuleInfo]:
    """K named modules, or K seeded-random ones (the paper's default), or all when k is None."""
    if k is None:
        return list(modules)
    by_name = {m.name: m for m in modules}
    if isinstance(k, (list, tuple)):
        unknown = [n for n in k if n not in by_name]
        if unknown:
            raise HubError(f"modules {unknown} are not in the hub; it has: {sorted(by_name)}")
        if not k:
            raise HubError("no modules selected: pass K >= 1 or at least one module name")
        return [by_name[n] for n in k]
    if k < 1:
        raise HubError(f"--modules must be >= 1, got {k}")
    if k > len(modules):
        raise HubError(f"--modules {k} is larger than the hub, which has {len(modules)} modules")
    return random.Random(seed).sample(list(modules), k)


def load_module_tensors(module: ModuleInfo, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    st = module.path / ADAPTER_WEIGHTS
    if st.exists():
        try:
            return load_file(st)
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for corrupt files
            raise HubError(f"{st}: cannot read the adapter weights ({e})") from None
    pkl = module.path / PICKLED_WEIGHTS[0]
    if pkl.exists():
        if not allow_pickle:
            raise HubError(
                f"{pkl}: pickle weights are refused (they can run code when loaded); convert the "
                "adapter to safetensors, or pass allow_pickle=True if you trust it"
            )
        return torch.load(pkl, map_location="cpu", weights_only=True)
    raise HubError(f"{module.path}: no {ADAPTER_WEIGHTS}")


@dataclass
class HubStack:
    """Per-layer stacked factors of N modules (see module docstring for shapes)."""

    modules: list[ModuleInfo]
    lora_a: dict[str, torch.Tensor] = field(default_factory=dict)
    lora_b: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return max(m.rank for m in self.modules)

    @property
    def layers(self) -> list[str]:
        return sorted(self.lora_a)

    def to(self, device) -> HubStack:
        self.lora_a = {k: v.to(device) for k, v in self.lora_a.items()}
        self.lora_b = {k: v.to(device) for k, v in self.lora_b.items()}
        return self


def stack_modules(model: torch.nn.Module, modules: list[ModuleInfo], allow_pickle: bool = False,
                  dtype: torch.dtype = torch.float32) -> HubStack:
    """Load, validate against `model`, pad, scale and stack the modules' factors."""
    if not modules:
        raise HubError("no modules to stack: the hub selection is empty")
    named = dict(model.named_modules())
    r_max = max(m.rank for m in modules)
    stack = HubStack(list(modules))
    for i, mod in enumerate(modules):
        tensors = load_module_tensors(mod, allow_pickle)
        found = 0
        for key, t in tensors.items():
            layer, which = peft_layer(key)
            if not layer:
                continue
            target = named.get(layer)
            if not isinstance(target, torch.nn.Linear):
                raise HubError(
                    f"adapter {mod.name!r} ({mod.path}) adapts {layer!r}, which is not a linear layer "
                    "of this base model: it was made for another base model"
                )
            expected = (mod.rank, target.in_features) if which == "A" else (target.out_features, mod.rank)
            if tuple(t.shape) != expected:
                raise HubError(
                    f"adapter {mod.name!r}: {key} has shape {tuple(t.shape)}, expected {expected} "
                    "for this base model: it was made for another base model or is corrupt"
                )
            if not torch.isfinite(t).all():
                raise HubError(f"adapter {mod.name!r}: {key} holds NaN or infinite values")
            if layer not in stack.lora_a:
                stack.lora_a[layer] = torch.zeros(len(modules), r_max, target.in_features, dtype=dtype)
                stack.lora_b[layer] = torch.zeros(len(modules), target.out_features, r_max, dtype=dtype)
            if which == "A":
                stack.lora_a[layer][i, : mod.rank] = t.to(dtype)
            else:
                stack.lora_b[layer][i, :, : mod.rank] = t.to(dtype) * mod.scaling
            found += 1
        if found == 0:
            raise HubError(f"adapter {mod.name!r} ({mod.path}) holds no LoRA factors")
    return stack
