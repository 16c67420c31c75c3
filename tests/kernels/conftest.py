"""Kernel tests run the grid on CUDA when there is one, else on CPU under Triton's interpreter.

The interpreter is switched on here, at import time and only on machines without CUDA (so GPU
runs stay native). Triton's own `@jit` helpers take their form when triton is first imported;
if another test module imported it earlier, the launchers rebuild the interpreted form of
these kernels per call (they use builtins only), so setting the variable later still works.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
