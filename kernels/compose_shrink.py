"""compose_shrink: h[b] = x[b] · (Σₖ w[c,k] A[idx[c,k]])ᵀ, c = row_cand[b] (lorahub rule).

x [B, T, d_in], lora_a [N, r, d_in], module_idx [C, K] int64, weights [C, K] fp32,
row_cand [B] int64  ->  h [B, T, r] fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lorahub_serve.kernels import _checks
from lorahub_serve.kernels._mix import compose
from lorahub_serve.kernels._runtime import block, dot_dtype, launch

OP = "compose_shrink"


@triton.jit
def _compose_shrink_kernel(
    x_ptr, a_ptr, cand_ptr, h_ptr,
    T, D_IN, R,
    s_xb, s_xt, s_xd, s_ac, s_ar, s_ad, s_cb, s_hb, s_ht, s_hr,
    BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    # One program: batch row `row`, a block of its tokens, a block of rank columns, against its
    # candidate's composed A_c (one gathered GEMM: no K-loop per tile).
    row = tl.program_id(0).to(tl.int64)
    offs_t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_r = tl.program_id(2) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    mask_t = offs_t < T
    mask_r = offs_r < R  # also pads small ranks up to tl.dot's minimum of 16
    cand = tl.load(cand_ptr + row * s_cb)
    acc = tl.full((BLOCK_T, BLOCK_R), 0.0, tl.float32)
    for d0 in range(0, D_IN, BLOCK_D):
        d = d0 + offs_d
        mask_d = d < D_IN
        x = tl.load(
            x_ptr + row * s_xb + offs_t[:, None] * s_xt + d[None, :] * s_xd,
            mask=mask_t[:, None] & mask_d[None, :], other=0.0,
        )
        a_c = tl.load(  # A_c tile, transposed to [BLOCK_D, BLOCK_R]
            a_ptr + cand * s_ac + offs_r[None, :] * s_ar + d[:, None] * s_ad,
            mask=mask_d[:, None] & mask_r[None, :], other=0.0,
        )
        if DOT_DTYPE == tl.float32:
            acc = tl.dot(x.to(tl.float32), a_c.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(x.to(DOT_DTYPE), a_c.to(DOT_DTYPE), acc)
    tl.store(
        h_ptr + row * s_hb + offs_t[:, None] * s_ht + offs_r[None, :] * s_hr,
        acc, mask=mask_t[:, None] & mask_r[None, :],
    )


def compose_shrink(x, lora_a, module_idx, weights, row_cand, *, check_indices=True):
    """h [B, T, r] fp32 = x [B, T, d_in] · A_cᵀ per row, A_c = Σₖ w[c,k] A[idx[c,k]].

    lora_a [N, r, d_in]; module_idx [C, K] int64; weights [C, K] fp32; row_cand [B] int64.
    A_c is composed once per call, for every candidate (fp32 sums; rounded to the factors' 16-bit
    dtype when the dot runs in it), then each row runs against its candidate's.
    `check_indices=False` skips the index range checks (a device sync on CUDA).
    """
    _checks.factors_a(OP, x, lora_a)
    _checks.routing(OP, module_idx, weights, row_cand, n_modules=lora_a.shape[0],
                    batch=x.shape[0], device=x.device, check_indices=check_indices)
    (b, t, d_in), (_, r, _) = x.shape, lora_a.shape
    dot = dot_dtype(x.dtype, lora_a.dtype)
    a_c = compose(lora_a, module_idx, weights)  # [C, r, d_in] fp32
    if dot != tl.float32:
        a_c = a_c.to(lora_a.dtype)
    h = torch.empty((b, t, r), dtype=torch.float32, device=x.device)
    args = (x, a_c, row_cand, h, t, d_in, r, *x.stride(), *a_c.stride(), row_cand.stride(0), *h.stride())
    return launch(OP, _compose_shrink_kernel, h, args, "BLOCK_R", BLOCK_D=block(d_in), DOT_DTYPE=dot)


def compose_shrink_ref(x, lora_a, module_idx, weights, row_cand):
    """Plain-torch compose_shrink in fp32: h [B, T, r]."""
    a_c = torch.einsum("ck,ckrd->crd", weights.float(), lora_a.float()[module_idx])  # [C, r, d_in]
    return torch.einsum("btd,brd->btr", x.float(), a_c[row_cand])
