"""stacked_expand: y[b] += Σₖ h[b, :, k·r:(k+1)·r] · B[idx[c,k]]ᵀ, c = row_cand[b] (linear rule).

h [B, T, K·r], lora_b [N, d_out, r], module_idx [C, K] int64, row_cand [B] int64,
y [B, T, d_out]  ->  y, updated in place. The weights were applied by stacked_shrink.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lorahub_serve.kernels import _checks
from lorahub_serve.kernels._runtime import block, dot_dtype, launch

OP = "stacked_expand"


@triton.jit
def _stacked_expand_kernel(
    h_ptr, b_ptr, idx_ptr, cand_ptr, y_ptr,
    T, D_OUT, R, J,
    s_hb, s_ht, s_hj, s_bn, s_bo, s_br, s_ic, s_ik, s_cb, s_yb, s_yt, s_yo,
    BLOCK_T: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_J: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    # One program: batch row `row`, a block of its tokens, a block of output columns; the
    # reduction runs over the J = K·r rows of the concatenated [B_1 … B_K]ᵀ (j -> module
    # j // r, rank j % r), so small ranks share a block instead of each padding to 16.
    row = tl.program_id(0).to(tl.int64)
    offs_t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_o = tl.program_id(2) * BLOCK_O + tl.arange(0, BLOCK_O)
    mask_t = offs_t < T
    mask_o = offs_o < D_OUT
    cand = tl.load(cand_ptr + row * s_cb)
    acc = tl.full((BLOCK_T, BLOCK_O), 0.0, tl.float32)
    for j0 in range(0, J, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        mask_j = j < J
        n = tl.load(idx_ptr + cand * s_ic + (j // R) * s_ik, mask=mask_j, other=0)  # [BLOCK_J]
        h = tl.load(
            h_ptr + row * s_hb + offs_t[:, None] * s_ht + j[None, :] * s_hj,
            mask=mask_t[:, None] & mask_j[None, :], other=0.0,
        )
        b = tl.load(  # [BLOCK_J, BLOCK_O], the gathered stack transposed
            b_ptr + n[:, None] * s_bn + (j % R)[:, None] * s_br + offs_o[None, :] * s_bo,
            mask=mask_j[:, None] & mask_o[None, :], other=0.0,
        )
        if DOT_DTYPE == tl.float32:
            acc = tl.dot(h.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(h.to(DOT_DTYPE), b.to(DOT_DTYPE), acc)
    y_ptrs = y_ptr + row * s_yb + offs_t[:, None] * s_yt + offs_o[None, :] * s_yo
    mask = mask_t[:, None] & mask_o[None, :]
    y = tl.load(y_ptrs, mask=mask, other=0.0)
    tl.store(y_ptrs, (y.to(tl.float32) + acc).to(y_ptr.dtype.element_ty), mask=mask)


def stacked_expand(h, lora_b, module_idx, row_cand, y, *, check_indices=True):
    """y [B, T, d_out] += Σₖ h[:, :, k·r:(k+1)·r] · B[idx[c,k]]ᵀ per row; returns y.

    h [B, T, K·r]; lora_b [N, d_out, r]; module_idx [C, K] int64; row_cand [B] int64.
    `check_indices=False` skips the index range checks (a device sync on CUDA).
    """
    _checks.tensor(OP, "h", h, "[B, T, K*r]", _checks.FLOAT_DTYPES)
    _checks.factors_b(OP, lora_b, None, h.device)
    _checks.routing(OP, module_idx, None, row_cand, n_modules=lora_b.shape[0],
                    batch=h.shape[0], device=h.device, check_indices=check_indices)
    (_, d_out, r), k = lora_b.shape, module_idx.shape[1]
    _checks.expand_io(OP, h, y, lora_b, k * r, "K*r = module_idx.shape[1] * lora_b.shape[2]")
    args = (h, lora_b, module_idx, row_cand, y, h.shape[1], d_out, r, k * r,
            *h.stride(), *lora_b.stride(), *module_idx.stride(), row_cand.stride(0), *y.stride())
    return launch(OP, _stacked_expand_kernel, y, args, "BLOCK_O", BLOCK_J=block(k * r),
                  DOT_DTYPE=dot_dtype(lora_b.dtype, lora_b.dtype))  # h (fp32) rounds to 16-bit factors


def stacked_expand_ref(h, lora_b, module_idx, row_cand, y):
    """Plain-torch stacked_expand in fp32: y [B, T, d_out] += ..., in place; returns y."""
    b = lora_b.float()[module_idx[row_cand]]  # [B, K, d_out, r]
    h4 = h.float().unflatten(2, (b.shape[1], b.shape[3]))  # [B, T, K, r]
    y += torch.einsum("btkr,bkor->bto", h4, b).to(y.dtype)
    return y
