"""compose_shrink: h[b] = x[b] · (Σₖ w[c,k] A[idx[c,k]])ᵀ, c = row_cand[b] (lorahub rule).

x [B, T, d_in], lora_a [N, r, d_in], module_idx [C, K] int64, weights [C, K] fp32,
row_cand [B] int64  ->  h [B, T, r] fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lorahub_serve.kernels import _checks
from lorahub_serve.kernels._runtime import block, dot_dtype, launch

OP = "compose_shrink"


@triton.jit
def _compose_shrink_kernel(
    x_ptr, a_ptr, idx_ptr, w_ptr, cand_ptr, h_ptr,
    T, D_IN, R, K,
    s_xb, s_xt, s_xd, s_an, s_ar, s_ad, s_ic, s_ik, s_wc, s_wk, s_cb, s_hb, s_ht, s_hr,
    BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    # One program: batch row `row`, a block of its tokens, a block of rank columns.
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
        # A_c tile, transposed to [BLOCK_D, BLOCK_R]: composed in registers, never stored.
        a_c = tl.full((BLOCK_D, BLOCK_R), 0.0, tl.float32)
        for k in range(K):
            n = tl.load(idx_ptr + cand * s_ic + k * s_ik)
            w = tl.load(w_ptr + cand * s_wc + k * s_wk)
            a = tl.load(
                a_ptr + n * s_an + offs_r[None, :] * s_ar + d[:, None] * s_ad,
                mask=mask_d[:, None] & mask_r[None, :], other=0.0,
            )
            a_c += w * a.to(tl.float32)
        if DOT_DTYPE == tl.float32:
            acc = tl.dot(x.to(tl.float32), a_c, acc, input_precision="ieee")
        else:
            acc = tl.dot(x.to(DOT_DTYPE), a_c.to(DOT_DTYPE), acc)
    tl.store(
        h_ptr + row * s_hb + offs_t[:, None] * s_ht + offs_r[None, :] * s_hr,
        acc, mask=mask_t[:, None] & mask_r[None, :],
    )


def compose_shrink(x, lora_a, module_idx, weights, row_cand, *, check_indices=True):
    """h [B, T, r] fp32 = x [B, T, d_in] · A_cᵀ per row, A_c = Σₖ w[c,k] A[idx[c,k]].

    lora_a [N, r, d_in]; module_idx [C, K] int64; weights [C, K] fp32; row_cand [B] int64.
    `check_indices=False` skips the index range checks (a device sync on CUDA).
    """
    _checks.factors_a(OP, x, lora_a)
    _checks.routing(OP, module_idx, weights, row_cand, n_modules=lora_a.shape[0],
                    batch=x.shape[0], device=x.device, check_indices=check_indices)
    (b, t, d_in), (_, r, _), k = x.shape, lora_a.shape, module_idx.shape[1]
    h = torch.empty((b, t, r), dtype=torch.float32, device=x.device)
    args = (x, lora_a, module_idx, weights, row_cand, h, t, d_in, r, k,
            *x.stride(), *lora_a.stride(), *module_idx.stride(), *weights.stride(),
            row_cand.stride(0), *h.stride())
    return launch(OP, _compose_shrink_kernel, h, args, "BLOCK_R", BLOCK_D=block(d_in),
                  DOT_DTYPE=dot_dtype(x.dtype, lora_a.dtype))


def compose_shrink_ref(x, lora_a, module_idx, weights, row_cand):
    """Plain-torch compose_shrink in fp32: h [B, T, r]."""
    a_c = torch.einsum("ck,ckrd->crd", weights.float(), lora_a.float()[module_idx])  # [C, r, d_in]
    return torch.einsum("btd,brd->btr", x.float(), a_c[row_cand])
