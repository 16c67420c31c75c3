"""How the launchers run a kernel: which compiled form, which block sizes, which dot dtype.

`@triton.jit` picks its form once, when the kernel module is imported: an interpreter
function when TRITON_INTERPRET=1 is set, a compiled function otherwise. The launchers instead
pick per call from the tensors' device, rebuilding the other form from `kernel.fn` when needed,
so one process can run interpreted kernels on CPU beside native ones on CUDA, and the kernels
still work on CPU when this package was imported before the variable was set.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton import knobs
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

_compiled: dict = {}
_interpreted: dict = {}

_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def interpreter_enabled() -> bool:
    """True when TRITON_INTERPRET=1 is set (read now, not at import)."""
    return bool(knobs.runtime.interpret)


def kernel_for(op: str, kernel, device: torch.device):
    """`kernel` in the form that runs on `device`: compiled on CUDA, interpreted on CPU."""
    if device.type == "cuda":
        if isinstance(kernel, JITFunction):
            return kernel
        if kernel.fn not in _compiled:
            _compiled[kernel.fn] = JITFunction(kernel.fn)
        return _compiled[kernel.fn]
    if device.type == "cpu":
        if not interpreter_enabled():
            raise RuntimeError(
                f"{op}: the tensors are on cpu, where Triton kernels run only under its "
                "interpreter; set TRITON_INTERPRET=1 in the environment (tests do this in "
                "tests/kernels/conftest.py), or use lora_delta(..., backend='torch'), "
                "which is the fast path on CPU"
            )
        if isinstance(kernel, InterpretedFunction):
            return kernel
        if kernel.fn not in _interpreted:
            _interpreted[kernel.fn] = InterpretedFunction(kernel.fn)
        return _interpreted[kernel.fn]
    raise ValueError(
        f"{op}: tensors on device {device} are not supported; the Triton kernels run on CUDA "
        "(or on CPU under TRITON_INTERPRET=1); move the tensors with .cuda() or use "
        "lora_delta(..., backend='torch')"
    )


def block(n: int, lo: int = 16, hi: int = 64) -> int:
    """Power-of-two block covering n, clamped to [lo, hi]; tl.dot needs every dim >= 16."""
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


def dot_dtype(a: torch.dtype, b: torch.dtype, device: torch.device):
    """Operand dtype of tl.dot: the shared 16-bit dtype, else fp32 (computed as IEEE fp32).

    Under the interpreter always fp32: its numpy dot multiplies bf16 tiles as raw integers.
    """
    if a == b and a != torch.float32 and device.type == "cuda":
        return _TL_DTYPES[a]
    return tl.float32
