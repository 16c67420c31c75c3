"""lora_delta: the LoRA term of one adapted linear layer for a batch of candidate rows.

delta[b] = x[b] · ΔW_cᵀ with c = row_cand[b], where
- rule "lorahub": ΔW_c = (Σₖ w_ck B_idx(c,k)) · (Σₖ w_ck A_idx(c,k))   (the paper's rule)
- rule "linear":  ΔW_c = Σₖ w_ck B_idx(c,k) · A_idx(c,k)               (exact mixture)
computed as a rank-r (lorahub) or rank-K·r (linear) shrink then expand, never forming ΔW_c.

Backends: "triton" runs the kernels (CUDA, or CPU under TRITON_INTERPRET=1 for tests);
"torch" is the fast path on CPU: lorahub composes A_c, B_c per candidate (a [C, N] mixing
matrix times the hub), gathers them per row and runs two bmm's; linear runs two plain GEMMs
against the whole hub when it is small (N <= 2K), else bmm's against gathered stacks;
"auto" picks triton for CUDA tensors and torch otherwise.
"""

from __future__ import annotations

import os
import sys
from typing import Literal, get_args

import torch

from lorahub_serve.kernels import _checks
from lorahub_serve.kernels._mix import compose, mixing, named_mixing

# Triton is imported only when a kernel runs: the torch path (CPU) never loads it (0.1 s, and
# its bindings' objects would outlive the CLI's frozen exit, see cli.run).

Rule = Literal["lorahub", "linear"]
Backend = Literal["auto", "torch", "triton"]
OP = "lora_delta"


def available_backends() -> tuple[str, ...]:
    """Backends that can run here: "torch" always, "triton" with CUDA or TRITON_INTERPRET=1."""
    if torch.cuda.is_available() or interpreter_enabled():
        return ("torch", "triton")
    return ("torch",)


def interpreter_enabled() -> bool:
    """TRITON_INTERPRET=1, read now (through Triton's own knobs once Triton is loaded)."""
    if "triton" in sys.modules:
        from lorahub_serve.kernels._runtime import interpreting

        return interpreting()
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes", "y")


def lora_delta(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    module_idx: torch.Tensor,
    weights: torch.Tensor,
    row_cand: torch.Tensor,
    rule: Rule,
    backend: Backend = "auto",
    *,
    out: torch.Tensor | None = None,
    check_indices: bool = True,
    validate: bool = True,
    fused: bool = False,
) -> torch.Tensor:
    """delta [B, T, d_out] (dtype of x) = LoRA term of each row's candidate.

    x [B, T, d_in]; lora_a [N, r, d_in]; lora_b [N, d_out, r]; module_idx [C, K] int64;
    weights [C, K] fp32; row_cand [B] int64 in [0, C). out: a [B, T, d_out] tensor (the base
    layer's output) to accumulate into, in place, and return — no zeros-then-add.
    `check_indices=False` skips the index range checks (a device sync on CUDA) for callers that
    validated the batch once; `validate=False` skips every check (the engine's layers: shapes
    were checked when the hub was attached, the routing once per batch). `fused=True` runs the
    lorahub rule's Triton path as one kernel (`compose_delta`, ranks up to 128) instead of two.
    """
    if validate:
        _validate(x, lora_a, lora_b, module_idx, weights, row_cand, rule, backend, out, check_indices)
    if backend == "torch" or (backend == "auto" and not x.is_cuda):
        torch_path = _lorahub_torch if rule == "lorahub" else _linear_torch
        delta = torch_path(x, lora_a, lora_b, module_idx, weights, row_cand, out)
        return delta if out is None else out
    from lorahub_serve import kernels  # through the package: it loads them on first use

    b, t = x.shape[:2]
    y = out if out is not None else torch.zeros((b, t, lora_b.shape[1]), dtype=x.dtype, device=x.device)
    if rule == "lorahub" and fused and lora_a.shape[1] <= _fused_max_rank():
        return kernels.compose_delta(x, lora_a, lora_b, module_idx, weights, row_cand, y, check_indices=False)
    if rule == "lorahub":
        h = kernels.compose_shrink(x, lora_a, module_idx, weights, row_cand, check_indices=False)
        return kernels.compose_expand(h, lora_b, module_idx, weights, row_cand, y, check_indices=False)
    h = kernels.stacked_shrink(x, lora_a, module_idx, weights, row_cand, check_indices=False)
    return kernels.stacked_expand(h, lora_b, module_idx, row_cand, y, check_indices=False)


def _fused_max_rank() -> int:
    from lorahub_serve.kernels._runtime import FUSED_MAX_RANK

    return FUSED_MAX_RANK


def _validate(x, lora_a, lora_b, module_idx, weights, row_cand, rule, backend, out, check_indices) -> None:
    _choice(OP, "rule", rule, Rule)
    _choice(OP, "backend", backend, Backend)
    _checks.factors_a(OP, x, lora_a)
    _checks.factors_b(OP, lora_b, lora_a.shape[1], x.device)
    _checks.dim(OP, "lora_b", lora_b, 0, lora_a.shape[0], "N = lora_a.shape[0]")
    _checks.routing(OP, module_idx, weights, row_cand, n_modules=lora_a.shape[0],
                    batch=x.shape[0], device=x.device, check_indices=check_indices)
    want = (*x.shape[:2], lora_b.shape[1])
    if out is not None and (tuple(out.shape) != want or out.dtype != x.dtype or out.device != x.device):
        raise ValueError(f"{OP}: out must be a {list(want)} {x.dtype} tensor on {x.device} (the base "
                         f"layer's output); got {list(out.shape)} {out.dtype} on {out.device}")


def _choice(op: str, name: str, value, literal) -> None:
    allowed = get_args(literal)
    if value not in allowed:
        raise ValueError(f"{op}: {name} must be one of {allowed}; got {value!r}")


def _lorahub_torch(x, lora_a, lora_b, module_idx, weights, row_cand, out=None):
    """Compose A_c [C, r, d_in] and B_c [C, d_out, r] once (one small matmul each), then bmm
    (accumulating into `out` when given)."""
    used, mix = named_mixing(module_idx, weights)  # one for A and B, over the named modules only
    a_c = compose(lora_a, module_idx, weights, mix, used).to(x.dtype)  # [C, r, d_in]
    b_c = compose(lora_b, module_idx, weights, mix, used).to(x.dtype)  # [C, d_out, r]
    h = torch.bmm(x, a_c[row_cand].transpose(1, 2))  # [B, T, r]
    if out is not None:
        return out.baddbmm_(h, b_c[row_cand].transpose(1, 2))
    return torch.bmm(h, b_c[row_cand].transpose(1, 2))  # [B, T, d_out]


def _linear_torch(x, lora_a, lora_b, module_idx, weights, row_cand, out=None):
    """Small hub (N <= 2K): two plain GEMMs against the whole hub; else gathered stacks + bmm."""
    n, k = lora_a.shape[0], module_idx.shape[1]
    if n <= 2 * k:  # measured 2-3x faster than the bmm path on CPU even at N = 2K
        delta = _linear_torch_hub(x, lora_a, lora_b, module_idx, weights, row_cand)
    else:
        delta = _linear_torch_stacked(x, lora_a, lora_b, module_idx, weights, row_cand)
    return delta if out is None else out.add_(delta)


def _linear_torch_hub(x, lora_a, lora_b, module_idx, weights, row_cand):
    """Every row against all N modules: h = x·[A_1…A_N]ᵀ, scale block n by mix[c, n], expand."""
    (n, r, d_in), (b, t, _), d_out = lora_a.shape, x.shape, lora_b.shape[1]
    mix = mixing(module_idx, weights, n)[row_cand].to(x.dtype)  # [B, N]
    h = x.reshape(b * t, d_in) @ lora_a.reshape(n * r, d_in).to(x.dtype).T  # [B·T, N·r]
    h = (h.view(b, t, n, r) * mix[:, None, :, None]).view(b * t, n * r)
    b_cat = lora_b.permute(1, 0, 2).reshape(d_out, n * r).to(x.dtype)  # [d_out, N·r]
    return (h @ b_cat.T).view(b, t, d_out)


def _linear_torch_stacked(x, lora_a, lora_b, module_idx, weights, row_cand):
    """Gather weighted stacks [·, K·r, d_in] and [·, K·r, d_out], then bmm."""
    if x.shape[0] <= module_idx.shape[0]:  # few rows: gather per row directly
        module_idx, weights, row_cand = module_idx[row_cand], weights[row_cand], None
    k, r = module_idx.shape[1], lora_a.shape[1]
    a = lora_a[module_idx].float() * weights[:, :, None, None]  # [·, K, r, d_in]
    a = a.to(x.dtype).flatten(1, 2)  # [·, K·r, d_in]
    b = lora_b.transpose(1, 2)[module_idx].reshape(-1, k * r, lora_b.shape[1]).to(x.dtype)
    if row_cand is not None:  # several rows per candidate: stacks per candidate, then per row
        a, b = a[row_cand], b[row_cand]
    h = torch.bmm(x, a.transpose(1, 2))  # [B, T, K·r]
    return torch.bmm(h, b)  # [B, T, d_out]
