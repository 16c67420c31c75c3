"""compose_expand: y[b] += h[b] · (Σₖ w[c,k] B[idx[c,k]])ᵀ, c = row_cand[b] (lorahub rule).

h [B, T, r], lora_b [N, d_out, r], module_idx [C, K] int64, weights [C, K] fp32,
row_cand [B] int64, y [B, T, d_out]  ->  y, updated in place.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lorahub_serve.kernels import _checks
from lorahub_serve.kernels._mix import compose
from lorahub_serve.kernels._runtime import block, dot_dtype, launch

OP = "compose_expand"


@triton.jit
def _compose_expand_kernel(
    h_ptr, b_ptr, cand_ptr, y_ptr,
    T, D_OUT, R,
    s_hb, s_ht, s_hr, s_bc, s_bo, s_br, s_cb, s_yb, s_yt, s_yo,
    BLOCK_T: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_R: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    # One program: batch row `row`, a block of its tokens, a block of output columns, against its
    # candidate's composed B_c, accumulated into y (the base layer's output).
    row = tl.program_id(0).to(tl.int64)
    offs_t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_o = tl.program_id(2) * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_r = tl.arange(0, BLOCK_R)
    mask_t = offs_t < T
    mask_o = offs_o < D_OUT
    cand = tl.load(cand_ptr + row * s_cb)
    acc = tl.full((BLOCK_T, BLOCK_O), 0.0, tl.float32)
    for r0 in range(0, R, BLOCK_R):
        r = r0 + offs_r
        mask_r = r < R  # pads small ranks up to tl.dot's minimum of 16
        h = tl.load(
            h_ptr + row * s_hb + offs_t[:, None] * s_ht + r[None, :] * s_hr,
            mask=mask_t[:, None] & mask_r[None, :], other=0.0,
        )
        b_c = tl.load(  # B_c tile, transposed to [BLOCK_R, BLOCK_O]
            b_ptr + cand * s_bc + offs_o[None, :] * s_bo + r[:, None] * s_br,
            mask=mask_r[:, None] & mask_o[None, :], other=0.0,
        )
        if DOT_DTYPE == tl.float32:
            acc = tl.dot(h.to(tl.float32), b_c.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(h.to(DOT_DTYPE), b_c.to(DOT_DTYPE), acc)
    y_ptrs = y_ptr + row * s_yb + offs_t[:, None] * s_yt + offs_o[None, :] * s_yo
    mask = mask_t[:, None] & mask_o[None, :]
    y = tl.load(y_ptrs, mask=mask, other=0.0)
    tl.store(y_ptrs, (y.to(tl.float32) + acc).to(y_ptr.dtype.element_ty), mask=mask)


def compose_expand(h, lora_b, module_idx, weights, row_cand, y, *, check_indices=True):
    """y [B, T, d_out] += h [B, T, r] · B_cᵀ per row, B_c = Σₖ w[c,k] B[idx[c,k]]; returns y.

    lora_b [N, d_out, r]; module_idx [C, K] int64; weights [C, K] fp32; row_cand [B] int64.
    B_c is composed once per call, for every candidate (as in `compose_shrink`).
    `check_indices=False` skips the index range checks (a device sync on CUDA).
    """
    _checks.tensor(OP, "h", h, "[B, T, r]", _checks.FLOAT_DTYPES)
    _checks.factors_b(OP, lora_b, None, h.device)
    _checks.routing(OP, module_idx, weights, row_cand, n_modules=lora_b.shape[0],
                    batch=h.shape[0], device=h.device, check_indices=check_indices)
    _checks.expand_io(OP, h, y, lora_b, lora_b.shape[2], "r = lora_b.shape[2]")
    (_, t, r), d_out = h.shape, lora_b.shape[1]
    dot = dot_dtype(lora_b.dtype, lora_b.dtype)  # h (fp32) rounds to 16-bit factors
    b_c = compose(lora_b, module_idx, weights)  # [C, d_out, r] fp32
    if dot != tl.float32:
        b_c = b_c.to(lora_b.dtype)
    args = (h, b_c, row_cand, y, t, d_out, r, *h.stride(), *b_c.stride(), row_cand.stride(0), *y.stride())
    return launch(OP, _compose_expand_kernel, y, args, "BLOCK_O", BLOCK_R=block(r), DOT_DTYPE=dot)


def compose_expand_ref(h, lora_b, module_idx, weights, row_cand, y):
    """Plain-torch compose_expand in fp32: y [B, T, d_out] += ..., in place; returns y."""
    b_c = torch.einsum("ck,ckor->cor", weights.float(), lora_b.float()[module_idx])  # [C, d_out, r]
    y += torch.einsum("btr,bor->bto", h.float(), b_c[row_cand]).to(y.dtype)
    return y
