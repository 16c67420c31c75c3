"""Composition of hub factors per candidate, once per call (torch only: no Triton import).

mix [C, N] with mix[c, n] = Σ_{k: idx[c,k] = n} w[c,k] turns the K-way gather + weighted sum into
one small matmul against the stacked hub, so each candidate's A_c [r, d_in] or B_c [d_out, r] is
formed once per call (not once per kernel tile, nor per row): the lorahub rule's factors, never
the d_out x d_in product. Only the modules the candidates name take part: a search over K of a
120-module hub mixes K rows, not N (on CPU, at bf16 and population 4, mixing all N was ~10 % of
a forward pass).
"""

from __future__ import annotations

import torch


def mixing(module_idx: torch.Tensor, weights: torch.Tensor, n_modules: int) -> torch.Tensor:
    """mix [C, N] fp32 (see the module docstring)."""
    mix = torch.zeros((module_idx.shape[0], n_modules), dtype=torch.float32, device=weights.device)
    return mix.scatter_add_(1, module_idx, weights.float())


def compose(factors: torch.Tensor, module_idx: torch.Tensor, weights: torch.Tensor,
            mix: torch.Tensor | None = None) -> torch.Tensor:
    """Σₖ w[c,k] factors[idx[c,k]] for every candidate: [C, *factors.shape[1:]] fp32, summed in fp32.
    mix: `mixing(module_idx, weights, N)` when the caller already has it (A and B share one)."""
    n = factors.shape[0]
    if mix is None:
        mix = mixing(module_idx, weights, n)
    used = torch.unique(module_idx)
    if used.numel() < n:  # a search names K of the hub's N modules: mix (and upcast) only those
        mix, factors = mix.index_select(1, used), factors.index_select(0, used)
    return (mix @ factors.reshape(factors.shape[0], -1).float()).view(module_idx.shape[0], *factors.shape[1:])
