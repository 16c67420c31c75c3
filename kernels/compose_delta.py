"""compose_delta: y[b] += (x[b] · A_cᵀ) · B_cᵀ in one kernel, c = row_cand[b] (lorahub rule, fused).

x [B, T, d_in], lora_a [N, r, d_in], lora_b [N, d_out, r], module_idx [C, K] int64, weights [C, K]
fp32, row_cand [B] int64, y [B, T, d_out]  ->  y, updated in place.

compose_shrink then compose_expand, fused: a program's h tile [BLOCK_T, r] stays in registers
between the two (no h round trip through memory, one launch instead of two), for ranks up to
MAX_RANK. Whether it pays over the two kernels is a GPU measurement (`bench/bench_lora_delta.py`
times both); `lora_delta` uses it only when asked (`fused=True`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lorahub_serve.kernels import _checks
from lorahub_serve.kernels._mix import compose, mixing
from lorahub_serve.kernels._runtime import FUSED_MAX_RANK as MAX_RANK
from lorahub_serve.kernels._runtime import block, dot_dtype, kernel_for

OP = "compose_delta"


@triton.jit
def _compose_delta_kernel(
    x_ptr, a_ptr, b_ptr, cand_ptr, y_ptr,
    T, D_IN, D_OUT, R,
    s_xb, s_xt, s_xd, s_ac, s_ar, s_ad, s_bc, s_bo, s_br, s_cb, s_yb, s_yt, s_yo,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_O: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    # One program: batch row `row`, a block of its tokens, every output column.
    row = tl.program_id(0).to(tl.int64)
    offs_t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_r = tl.arange(0, BLOCK_R)
    mask_t = offs_t < T
    mask_r = offs_r < R  # the whole rank in one block (R <= MAX_RANK), padded to >= 16
    cand = tl.load(cand_ptr + row * s_cb)
    h = tl.full((BLOCK_T, BLOCK_R), 0.0, tl.float32)
    for d0 in range(0, D_IN, BLOCK_D):  # shrink: h = x · A_cᵀ
        d = d0 + tl.arange(0, BLOCK_D)
        mask_d = d < D_IN
        x = tl.load(x_ptr + row * s_xb + offs_t[:, None] * s_xt + d[None, :] * s_xd,
                    mask=mask_t[:, None] & mask_d[None, :], other=0.0)
        a_c = tl.load(a_ptr + cand * s_ac + offs_r[None, :] * s_ar + d[:, None] * s_ad,
                      mask=mask_d[:, None] & mask_r[None, :], other=0.0)
        if DOT_DTYPE == tl.float32:
            h = tl.dot(x.to(tl.float32), a_c.to(tl.float32), h, input_precision="ieee")
        else:
            h = tl.dot(x.to(DOT_DTYPE), a_c.to(DOT_DTYPE), h)
    h_dot = h.to(DOT_DTYPE)  # as compose_expand rounds the stored h
    for o0 in range(0, D_OUT, BLOCK_O):  # expand: y += h · B_cᵀ, block by block
        o = o0 + tl.arange(0, BLOCK_O)
        mask_o = o < D_OUT
        b_c = tl.load(b_ptr + cand * s_bc + o[None, :] * s_bo + offs_r[:, None] * s_br,
                      mask=mask_r[:, None] & mask_o[None, :], other=0.0)
        if DOT_DTYPE == tl.float32:
            acc = tl.dot(h_dot, b_c.to(tl.float32), input_precision="ieee")
        else:
            acc = tl.dot(h_dot, b_c.to(DOT_DTYPE))
        y_ptrs = y_ptr + row * s_yb + offs_t[:, None] * s_yt + o[None, :] * s_yo
        mask = mask_t[:, None] & mask_o[None, :]
        y = tl.load(y_ptrs, mask=mask, other=0.0)
        tl.store(y_ptrs, (y.to(tl.float32) + acc).to(y_ptr.dtype.element_ty), mask=mask)


def compose_delta(x, lora_a, lora_b, module_idx, weights, row_cand, y, *, check_indices=True):
    """y [B, T, d_out] += x · A_cᵀ · B_cᵀ per row (A_c, B_c composed once per call); returns y.

    lora_a [N, r, d_in]; lora_b [N, d_out, r], r <= MAX_RANK; module_idx [C, K] int64; weights
    [C, K] fp32; row_cand [B] int64. `check_indices=False` skips the index range checks.
    """
    _checks.factors_a(OP, x, lora_a)
    _checks.factors_b(OP, lora_b, lora_a.shape[1], x.device)
    _checks.dim(OP, "lora_b", lora_b, 0, lora_a.shape[0], "N = lora_a.shape[0]")
    _checks.routing(OP, module_idx, weights, row_cand, n_modules=lora_a.shape[0],
                    batch=x.shape[0], device=x.device, check_indices=check_indices)
    _checks.tensor(OP, "y", y, "[B, T, d_out]", _checks.FLOAT_DTYPES, x.device)
    (b, t, d_in), (_, r, _), d_out = x.shape, lora_a.shape, lora_b.shape[1]
    if tuple(y.shape) != (b, t, d_out):
        raise ValueError(f"{OP}: y must be [B, T, d_out] = {[b, t, d_out]}; got {list(y.shape)}")
    if r > MAX_RANK:
        raise ValueError(f"{OP}: rank {r} is above MAX_RANK = {MAX_RANK}; use compose_shrink and "
                         "compose_expand")
    kernel = kernel_for(OP, _compose_delta_kernel, x.device)
    if y.numel() == 0:
        return y
    dot = dot_dtype(x.dtype, lora_a.dtype)
    mix = mixing(module_idx, weights, lora_a.shape[0])  # one for A and B
    a_c, b_c = compose(lora_a, module_idx, weights, mix), compose(lora_b, module_idx, weights, mix)
    if dot != tl.float32:
        a_c, b_c = a_c.to(lora_a.dtype), b_c.to(lora_b.dtype)
    bt = block(t)
    kernel[(b, triton.cdiv(t, bt))](
        x, a_c, b_c, row_cand, y, t, d_in, d_out, r,
        *x.stride(), *a_c.stride(), *b_c.stride(), row_cand.stride(0), *y.stride(),
        BLOCK_T=bt, BLOCK_D=block(d_in), BLOCK_R=block(r, hi=MAX_RANK), BLOCK_O=block(d_out), DOT_DTYPE=dot)
    return y


def compose_delta_ref(x, lora_a, lora_b, module_idx, weights, row_cand, y):
    """Plain-torch compose_delta in fp32: y += ..., in place; returns y."""
    w = weights.float()
    a_c = torch.einsum("ck,ckrd->crd", w, lora_a.float()[module_idx])  # [C, r, d_in]
    b_c = torch.einsum("ck,ckor->cor", w, lora_b.float()[module_idx])  # [C, d_out, r]
    h = torch.einsum("btd,brd->btr", x.float(), a_c[row_cand])
    y += torch.einsum("btr,bor->bto", h, b_c[row_cand]).to(y.dtype)
    return y
