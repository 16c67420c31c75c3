"""How the launchers run a kernel: which form (compiled or interpreted), grid, blocks, dot dtype.

`@triton.jit` picks a kernel's form once, when its module is imported: an interpreter function
under TRITON_INTERPRET=1, a compiled one otherwise. The launchers pick per call instead, from
the variable's value now, rebuilding the other form from `kernel.fn` when needed. That works
because the kernels call only Triton builtins (`tl.full`, not the `@jit`-defined `tl.zeros`,
whose own form was fixed when triton was imported), so CPU tests still run interpreted when
some other module imported triton and these kernels before the variable was set.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton import knobs
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

_rebuilt: dict = {}
FUSED_MAX_RANK = 128  # compose_delta keeps h [BLOCK_T, r] in registers: ranks up to this

_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def interpreting() -> bool:
    """True when TRITON_INTERPRET=1 is set, read now through Triton's knobs (not at import;
    `dispatch.interpreter_enabled` is the public question, answerable without Triton)."""
    return bool(knobs.runtime.interpret)


def kernel_for(op: str, kernel, device: torch.device):
    """`kernel` as it must run now: interpreted under TRITON_INTERPRET=1 (on CPU, or on CUDA
    through host copies, as Triton itself does), else compiled for CUDA."""
    if device.type not in ("cpu", "cuda"):
        raise ValueError(
            f"{op}: tensors on device {device} are not supported; the Triton kernels run on "
            "CUDA (or on CPU under TRITON_INTERPRET=1); move them with .cuda(), or use "
            "lora_delta(..., backend='torch')"
        )
    form = InterpretedFunction if interpreting() else JITFunction
    if form is JITFunction and device.type == "cpu":
        raise RuntimeError(
            f"{op}: the tensors are on cpu, where Triton kernels run only under its "
            "interpreter; set TRITON_INTERPRET=1 in the environment (tests/kernels/conftest.py "
            "does), or use lora_delta(..., backend='torch'), the fast path on CPU"
        )
    if isinstance(kernel, form):
        return kernel
    key = (form, kernel.fn)
    if key not in _rebuilt:
        _rebuilt[key] = form(kernel.fn)
    return _rebuilt[key]


def launch(op: str, kernel, out: torch.Tensor, args: tuple, col_block: str, **meta) -> torch.Tensor:
    """The launchers' common tail: pick the kernel's form, then run it over out [B, T, N] with one
    program per (batch row, block of T tokens, block of N columns); returns `out`.

    `col_block` names the kernel's constexpr for the column block (BLOCK_R, BLOCK_O, BLOCK_J);
    BLOCK_T and it are sized here, `meta` carries the kernel's other constexprs.
    """
    kernel = kernel_for(op, kernel, out.device)
    if out.numel() == 0:
        return out
    b, t, n = out.shape
    bt, bn = block(t), block(n)
    kernel[(b, triton.cdiv(t, bt), triton.cdiv(n, bn))](*args, BLOCK_T=bt, **{col_block: bn}, **meta)
    return out


def block(n: int, lo: int = 16, hi: int = 64) -> int:
    """Power-of-two block covering n, clamped to [lo, hi]; tl.dot needs every dim >= 16."""
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


def dot_dtype(a: torch.dtype, b: torch.dtype):
    """Operand dtype of tl.dot: the shared 16-bit dtype, else fp32 (computed as IEEE fp32).

    Under the interpreter always fp32: its numpy dot multiplies bf16 tiles as raw integers.
    """
    if a == b and a != torch.float32 and not interpreting():
        return _TL_DTYPES[a]
    return tl.float32
