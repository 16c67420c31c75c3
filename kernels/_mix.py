"""Composition of hub factors per candidate, once per call (torch only: no Triton import).

mix [C, N] with mix[c, n] = Σ_{k: idx[c,k] = n} w[c,k] turns the K-way gather + weighted sum into
one small matmul against the stacked hub, so each candidate's A_c [r, d_in] or B_c [d_out, r] is
formed once per call (not once per kernel tile, nor per row): the lorahub rule's factors, never
the d_out x d_in product. The CPU path mixes only the modules the candidates name
(`named_mixing`): a search over K of a 120-module hub mixes K rows, not N (mixing all N was ~10 %
of a bf16 forward pass at population 4). CUDA keeps the [C, N] form: finding the named modules
(`torch.unique`) would sync the device in every layer.
"""

from __future__ import annotations

import torch


def mixing(module_idx: torch.Tensor, weights: torch.Tensor, n_modules: int) -> torch.Tensor:
    """mix [C, N] fp32 (see the module docstring)."""
    mix = torch.zeros((module_idx.shape[0], n_modules), dtype=torch.float32, device=weights.device)
    return mix.scatter_add_(1, module_idx, weights.float())


def named_mixing(module_idx: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(used [U], mix [C, U] fp32): the U hub modules the candidates name, and mix over those only."""
    used, col = torch.unique(module_idx, return_inverse=True)
    mix = torch.zeros((module_idx.shape[0], used.numel()), dtype=torch.float32, device=weights.device)
    return used, mix.scatter_add_(1, col, weights.float())


def compose(factors: torch.Tensor, module_idx: torch.Tensor, weights: torch.Tensor,
            mix: torch.Tensor | None = None, used: torch.Tensor | None = None) -> torch.Tensor:
    """Σₖ w[c,k] factors[idx[c,k]] for every candidate: [C, *factors.shape[1:]] fp32, summed in fp32.
    mix: `mixing(module_idx, weights, N)` when the caller already has it (A and B share one), or
    with `used` the pair `named_mixing` returns (only those rows of the hub are read and upcast)."""
    if used is not None:
        factors_used = factors.index_select(0, used)
    else:
        factors_used = factors
        if mix is None:
            mix = mixing(module_idx, weights, factors.shape[0])
    flat = factors_used.reshape(factors_used.shape[0], -1).float()
    return (mix @ flat).view(module_idx.shape[0], *factors.shape[1:])
