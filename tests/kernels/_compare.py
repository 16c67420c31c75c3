"""Tolerances (one table) and a comparison that reports how many elements mismatch and where."""

from __future__ import annotations

import pytest
import torch

# (atol, rtol) per dtype of the tensors under test; references are computed in fp32 or fp64.
TOLERANCES = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (5e-3, 5e-3),
    torch.bfloat16: (5e-2, 5e-2),
}

# Where the test grid runs: natively on CUDA if present, else interpreted on CPU (conftest.py).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# With @pytest.mark.gpu on the native-CUDA tests: they skip cleanly on a machine without CUDA.
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, label: str = ""):
    """Fail with the mismatch count, the first mismatching index and its two values."""
    atol, rtol = TOLERANCES[dtype]
    shapes = tuple(actual.shape), tuple(expected.shape)
    assert shapes[0] == shapes[1], f"{label}: shape {shapes[0]} != expected {shapes[1]}"
    got, want = actual.detach().cpu().double(), expected.detach().cpu().double()
    diff = (got - want).abs()
    bad = ~(diff <= atol + rtol * want.abs())  # `~(<=)` also flags NaN
    n_bad = int(bad.sum())
    if n_bad:
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise AssertionError(
            f"{label}: {n_bad}/{bad.numel()} elements outside atol={atol}, rtol={rtol}; "
            f"first at {first}: got {got[first].item():.6g}, expected {want[first].item():.6g}; "
            f"max |diff| {diff.nan_to_num(float('inf')).max().item():.3g}"
        )
