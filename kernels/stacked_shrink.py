"""stacked_shrink: h[b, :, k·r + i] = w[c,k] · x[b] · A[idx[c,k], i]ᵀ, c = row_cand[b] (linear).

x [B, T, d_in], lora_a [N, r, d_in], module_idx [C, K] int64, weights [C, K] fp32,
row_cand [B] int64  ->  h [B, T, K·r] fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lorahub_serve.kernels import _checks
from lorahub_serve.kernels._runtime import block, dot_dtype, launch

OP = "stacked_shrink"


@triton.jit
def _stacked_shrink_kernel(
    x_ptr, a_ptr, idx_ptr, w_ptr, cand_ptr, h_ptr,
    T, D_IN, R, J,
    s_xb, s_xt, s_xd, s_an, s_ar, s_ad, s_ic, s_ik, s_wc, s_wk, s_cb, s_hb, s_ht, s_hj,
    BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    # One program: batch row `row`, a block of its tokens, a block of the J = K·r columns of
    # the concatenated [A_1 … A_K]; column j is rank j % r of module j // r, so one block
    # spans several small-rank modules instead of padding each to 16.
    row = tl.program_id(0).to(tl.int64)
    offs_t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_j = tl.program_id(2) * BLOCK_J + tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    mask_t = offs_t < T
    mask_j = offs_j < J
    cand = tl.load(cand_ptr + row * s_cb)
    kk = offs_j // R
    n = tl.load(idx_ptr + cand * s_ic + kk * s_ik, mask=mask_j, other=0)  # [BLOCK_J]
    w = tl.load(w_ptr + cand * s_wc + kk * s_wk, mask=mask_j, other=0.0)
    a_rows = a_ptr + n * s_an + (offs_j % R) * s_ar  # row j of the gathered stack
    acc = tl.full((BLOCK_T, BLOCK_J), 0.0, tl.float32)
    for d0 in range(0, D_IN, BLOCK_D):
        d = d0 + offs_d
        mask_d = d < D_IN
        x = tl.load(
            x_ptr + row * s_xb + offs_t[:, None] * s_xt + d[None, :] * s_xd,
            mask=mask_t[:, None] & mask_d[None, :], other=0.0,
        )
        a = tl.load(  # [BLOCK_D, BLOCK_J], the stack transposed
            a_rows[None, :] + d[:, None] * s_ad, mask=mask_d[:, None] & mask_j[None, :], other=0.0,
        )
        if DOT_DTYPE == tl.float32:
            acc = tl.dot(x.to(tl.float32), a.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(x.to(DOT_DTYPE), a.to(DOT_DTYPE), acc)
    tl.store(
        h_ptr + row * s_hb + offs_t[:, None] * s_ht + offs_j[None, :] * s_hj,
        acc * w[None, :], mask=mask_t[:, None] & mask_j[None, :],
    )


def stacked_shrink(x, lora_a, module_idx, weights, row_cand, *, check_indices=True):
    """h [B, T, K·r] fp32: block k of row b is w[c,k] · x[b] · A[idx[c,k]]ᵀ, c = row_cand[b].

    x [B, T, d_in]; lora_a [N, r, d_in]; module_idx [C, K] int64; weights [C, K] fp32;
    row_cand [B] int64. `check_indices=False` skips the index range checks (a CUDA sync).
    """
    _checks.factors_a(OP, x, lora_a)
    _checks.routing(OP, module_idx, weights, row_cand, n_modules=lora_a.shape[0],
                    batch=x.shape[0], device=x.device, check_indices=check_indices)
    (b, t, d_in), r, k = x.shape, lora_a.shape[1], module_idx.shape[1]
    h = torch.empty((b, t, k * r), dtype=torch.float32, device=x.device)
    args = (x, lora_a, module_idx, weights, row_cand, h, t, d_in, r, k * r,
            *x.stride(), *lora_a.stride(), *module_idx.stride(), *weights.stride(),
            row_cand.stride(0), *h.stride())
    return launch(OP, _stacked_shrink_kernel, h, args, "BLOCK_J", BLOCK_D=block(d_in),
                  DOT_DTYPE=dot_dtype(x.dtype, lora_a.dtype))


def stacked_shrink_ref(x, lora_a, module_idx, weights, row_cand):
    """Plain-torch stacked_shrink in fp32: h [B, T, K·r]."""
    a = lora_a.float()[module_idx[row_cand]]  # [B, K, r, d_in]
    h = torch.einsum("btd,bkrd->btkr", x.float(), a) * weights[row_cand][:, None, :, None]
    return h.flatten(2)
