"""The shape grid shared by the kernel tests, random problems on it, and a dense oracle."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
from _compare import DEVICE


@dataclass(frozen=True)
class Case:
    """B rows of T tokens, d_in -> d_out, rank r, K of N hub modules, C candidates.

    `used` candidates get rows; the other C - used have none (None: every candidate, B >= C).
    """

    B: int
    T: int
    d_in: int
    d_out: int
    r: int
    K: int
    N: int
    C: int
    used: int | None = None

    def __str__(self) -> str:
        s = f"B{self.B}T{self.T}_{self.d_in}x{self.d_out}_r{self.r}K{self.K}N{self.N}C{self.C}"
        return s + (f"u{self.used}" if self.used is not None else "")


# Small dims keep the interpreter fast; odd sizes leave partial blocks everywhere.
CASES = [
    Case(1, 1, 1, 1, 1, 1, 1, 1),  # everything minimal
    Case(3, 5, 17, 13, 3, 2, 4, 2),
    Case(4, 7, 33, 31, 8, 20, 20, 4),  # LoraHub-like: r=8, K=N=20
    Case(3, 19, 70, 65, 16, 5, 7, 3, used=2),  # a candidate without rows; d_in, d_out > 64
    Case(2, 3, 24, 40, 64, 3, 5, 2),  # rank 64
    Case(2, 4, 20, 18, 5, 64, 64, 2),  # K 64
    Case(5, 2, 16, 16, 4, 3, 6, 64, used=3),  # 64 candidates, 61 without rows
    Case(6, 17, 130, 9, 7, 4, 9, 8, used=5),  # d_in over three blocks
    Case(3, 33, 12, 129, 2, 6, 6, 3),  # d_out over three blocks
    Case(2, 6, 45, 27, 33, 9, 12, 5, used=2),  # odd rank above 32
    Case(2, 3, 18, 20, 65, 2, 3, 2),  # rank over one rank block
    Case(1, 70, 8, 8, 8, 2, 2, 1),  # two token blocks
    Case(2, 3, 20, 20, 64, 64, 64, 2),  # rank 64 and K 64: K*r = 4096
    Case(4, 2, 9, 11, 1, 64, 30, 64, used=4),  # rank 1, K 64 > N (repeats), 64 candidates
    Case(7, 3, 23, 19, 12, 1, 1, 7),  # K = N = 1
]

# SmolLM2-135M q_proj shapes, for the native CUDA tests.
GPU_CASES = [Case(12, 66, 576, 576, 8, 20, 20, 4), Case(6, 66, 576, 192, 8, 20, 20, 8, used=3)]


def make_problem(case: Case, dtype=torch.float32, device=DEVICE, seed=0) -> SimpleNamespace:
    """Random inputs of lora_delta with O(1) outputs; module_idx may repeat a module."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    used = case.C if case.used is None else case.used
    cands = torch.randperm(case.C, generator=g)[:used]
    order = torch.randperm(case.B, generator=g)
    row_cand = cands[torch.arange(case.B) % used][order]  # every used candidate gets a row
    return SimpleNamespace(
        x=randn(case.B, case.T, case.d_in),
        lora_a=randn(case.N, case.r, case.d_in, scale=case.d_in**-0.5),
        lora_b=randn(case.N, case.d_out, case.r, scale=case.r**-0.5),
        module_idx=torch.randint(0, case.N, (case.C, case.K), generator=g).to(device),
        weights=(torch.randn(case.C, case.K, generator=g) * case.K**-0.5).to(device),
        row_cand=row_cand.to(device),
    )


def dense_delta(p: SimpleNamespace, rule: str) -> torch.Tensor:
    """Oracle in fp64 that builds each candidate's dense ΔW [d_out, d_in]: [B, T, d_out]."""
    a, b, w = p.lora_a.double().cpu(), p.lora_b.double().cpu(), p.weights.double().cpu()
    idx = p.module_idx.cpu()
    delta_w = {}
    for c in set(p.row_cand.tolist()):
        ks = range(idx.shape[1])
        if rule == "lorahub":
            a_c = sum(w[c, k] * a[idx[c, k]] for k in ks)
            b_c = sum(w[c, k] * b[idx[c, k]] for k in ks)
            delta_w[c] = b_c @ a_c
        else:
            delta_w[c] = sum(w[c, k] * b[idx[c, k]] @ a[idx[c, k]] for k in ks)
    x = p.x.double().cpu()
    rows = [x[i] @ delta_w[c].T for i, c in enumerate(p.row_cand.tolist())]
    return torch.stack(rows) if rows else x.new_zeros(0, x.shape[1], b.shape[1])
