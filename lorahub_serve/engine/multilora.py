"""Multi-candidate LoRA on a frozen base model.

`attach(model, stack, rule, backend)` wraps every hub-adapted `nn.Linear` so that

    y[b] = x[b]·Wᵀ (+ bias) + lora_delta(x, A, B, module_idx, weights, row_cand)[b]

where each batch row b belongs to candidate row_cand[b], and candidate c composes hub modules
module_idx[c] with weights[c] ([K]), or, with per-layer-group weights ([G, K], `layer_groups`),
with the row of its layer's group: each layer reads its group's [C, K] slice, so the kernels see
the same [C, K] routing either way. The routing for the current micro-batch lives in one shared
`Routing` object that the evaluator sets before each forward pass. No per-candidate d×d
matrix is ever built (see lorahub_serve.kernels).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from lorahub_serve.engine.hub import HubStack
from lorahub_serve.engine.layer_groups import check_groups, group_index, layer_depth, n_depths
from lorahub_serve.kernels import lora_delta


@dataclass
class Routing:
    """Per-micro-batch routing, shared by every wrapped layer.

    module_idx [C, K] int64, weights [C, K] or [C, G, K] fp32 (as routed), row_cand [B] int64;
    group_weights: G contiguous [C, K] tensors, group g's weights (G = 1: `weights` itself).
    """

    module_idx: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    row_cand: torch.Tensor | None = None
    group_weights: tuple[torch.Tensor, ...] = ()


class MultiLoraLinear(torch.nn.Module):
    def __init__(self, base: torch.nn.Linear, lora_a: torch.Tensor, lora_b: torch.Tensor,
                 routing: Routing, rule: str, backend: str, depth: int = 0, n_depth: int = 1):
        super().__init__()
        self.base = base
        self.depth, self.n_depth = depth, n_depth  # block index and blocks adapted (layer groups)
        self.register_buffer("lora_a", lora_a, persistent=False)  # [N, r, d_in]
        self.register_buffer("lora_b", lora_b, persistent=False)  # [N, d_out, r]
        self.routing, self.rule, self.backend = routing, rule, backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, T, d_in]
        y = self.base(x)
        r = self.routing
        if r.row_cand is None:  # no routing: plain base model
            return y
        if y.dtype != x.dtype:  # autocast: keep the LoRA term in the base output's dtype
            x = x.to(y.dtype)
        # shapes were checked when the hub was attached and the routing once per batch
        weights = r.group_weights[group_index(self.depth, self.n_depth, len(r.group_weights))]
        return lora_delta(x, self.lora_a, self.lora_b, r.module_idx, weights, r.row_cand,
                          self.rule, self.backend, out=y, validate=False)


class Attached:
    """Handle returned by `attach`; `detach()` restores the original layers."""

    def __init__(self, model, originals: dict[str, torch.nn.Linear], routing: Routing, n_modules: int,
                 n_depth: int | None = 1):
        self.model, self.originals, self.routing = model, originals, routing
        self.n_modules = n_modules  # hub modules a candidate may name
        self.n_depth = n_depth  # blocks the wrapped layers span (None: names without block index)

    @contextmanager
    def route(self, module_idx, weights) -> Iterator[Routing]:
        """Route the wrapped layers to candidates (module_idx [C, K], weights [C, K], or [C, G, K]
        with per-layer-group weights) while the block runs; the caller sets `routing.row_cand` [B]
        per forward pass. Reset on exit, so an exception never leaves a stale composition behind
        for the next caller."""
        r = self.routing
        device = next(self.model.parameters()).device
        module_idx, weights = np.asarray(module_idx, dtype=np.int64), np.asarray(weights, dtype=np.float32)
        grouped = weights.ndim == 3 and module_idx.ndim == 2 and weights.shape[::2] == module_idx.shape
        if module_idx.ndim != 2 or not (module_idx.shape == weights.shape or grouped):
            raise ValueError(f"route: module_idx {module_idx.shape} and weights {weights.shape} must "
                             "both be [C, K] (or weights [C, G, K]: per-layer-group weights)")
        if grouped:
            if self.n_depth is None:
                raise ValueError("route: per-layer-group weights need layers named with a block index")
            check_groups(weights.shape[1], self.n_depth)
        if module_idx.size and (module_idx.min() < 0 or module_idx.max() >= self.n_modules):
            raise ValueError(f"module_idx must lie in [0, {self.n_modules})")
        r.module_idx = torch.as_tensor(module_idx, device=device)
        r.weights = torch.as_tensor(weights, device=device)
        r.group_weights = (tuple(r.weights[:, g].contiguous() for g in range(weights.shape[1])) if grouped
                           else (r.weights,))
        try:
            yield r
        finally:
            r.row_cand = r.module_idx = r.weights = None
            r.group_weights = ()

    def detach(self) -> None:
        for name, lin in self.originals.items():
            _set_submodule(self.model, name, lin)
        self.originals = {}


def _set_submodule(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def attach(model: torch.nn.Module, stack: HubStack, rule: str = "lorahub", backend: str = "auto") -> Attached:
    """Wrap the stack's layers in `model` (in place); returns a handle holding the `Routing`."""
    routing = Routing()
    originals = {}
    device = next(model.parameters()).device
    try:
        n_depth = n_depths(stack.layers)
    except ValueError:  # a layer without block index: global weights only
        n_depth = None
    for name in stack.layers:
        base = model.get_submodule(name)
        if isinstance(base, MultiLoraLinear):
            raise RuntimeError(f"{name} is already wrapped; detach the previous engine first")  # noqa: TRY004 - a state error, not a type error
        originals[name] = base
        wrapped = MultiLoraLinear(base, stack.lora_a[name].to(device), stack.lora_b[name].to(device),
                                  routing, rule, backend, *((layer_depth(name), n_depth) if n_depth else ()))
        _set_submodule(model, name, wrapped)
    return Attached(model, originals, routing, len(stack.modules), n_depth)
