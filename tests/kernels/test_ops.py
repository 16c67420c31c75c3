"""The five Triton ops against their torch `*_ref` twins, as one table: interpreted on CPU
(TRITON_INTERPRET=1, conftest.py), natively on CUDA.

`OPS` says how each op is called; every test runs over every op (and the shape grid of
`_problems.CASES`), so a new op is one new row. Shrinks return h [B, T, width] fp32; expands
add into y [B, T, d_out] in place and return it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from _compare import assert_close, requires_cuda
from _problems import CASES, GPU_CASES, make_problem

from lorahub_serve.kernels import (
    compose_delta,
    compose_delta_ref,
    compose_expand,
    compose_expand_ref,
    compose_shrink,
    compose_shrink_ref,
    stacked_expand,
    stacked_expand_ref,
    stacked_shrink,
    stacked_shrink_ref,
)


@dataclass(frozen=True)
class Op:
    name: str
    fn: Callable
    ref: Callable
    params: tuple[str, ...]  # the op's positional inputs, by name

    @property
    def expand(self) -> bool:  # writes into y in place
        return "y" in self.params

    def __str__(self) -> str:
        return self.name

    def inputs(self, p, dtype: torch.dtype, seed: int = 1) -> dict[str, torch.Tensor]:
        """The op's inputs on problem `p`: its tensors, plus h (fp32, as a shrink gives) and y
        for an expand. A stacked h [B, T, K·r] is scaled by K^-1/2 to keep y O(1)."""
        args = {name: getattr(p, name) for name in self.params if hasattr(p, name)}
        if self.expand:
            g = torch.Generator().manual_seed(seed)
            (b, t, _), k, r = p.x.shape, p.module_idx.shape[1], p.lora_a.shape[1]
            stacked = self.name.startswith("stacked")
            h = torch.randn(b, t, k * r if stacked else r, generator=g)
            args["h"] = (h * k**-0.5 if stacked else h).to(p.x.device)
            args["y"] = torch.randn(b, t, p.lora_b.shape[1], generator=g).to(p.x.device, dtype)
        return args

    def call(self, fn: Callable, args: dict[str, torch.Tensor]):
        return fn(*(args[name] for name in self.params))


_SHRINK = ("x", "lora_a", "module_idx", "weights", "row_cand")
OPS = [
    Op("compose_shrink", compose_shrink, compose_shrink_ref, _SHRINK),
    Op("compose_expand", compose_expand, compose_expand_ref,
       ("h", "lora_b", "module_idx", "weights", "row_cand", "y")),
    Op("compose_delta", compose_delta, compose_delta_ref,
       ("x", "lora_a", "lora_b", "module_idx", "weights", "row_cand", "y")),
    Op("stacked_shrink", stacked_shrink, stacked_shrink_ref, _SHRINK),
    Op("stacked_expand", stacked_expand, stacked_expand_ref, ("h", "lora_b", "module_idx", "row_cand", "y")),
]
BY_NAME = {op.name: op for op in OPS}


def _check(op: Op, args: dict[str, torch.Tensor], dtype: torch.dtype, label: str = "") -> None:
    """Run the op and its reference on the same inputs and compare (in place for expands)."""
    if op.expand:
        want = op.call(op.ref, {**args, "y": args["y"].clone()})
        out = op.call(op.fn, args)
        assert out is args["y"], f"{op}: must return y, updated in place"
    else:
        want = op.call(op.ref, args)
        out = op.call(op.fn, args)
        assert out.dtype == torch.float32, f"{op}: h must be float32, got {out.dtype}"
    assert_close(out, want, dtype, f"{op}{label}")


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("op", OPS, ids=str)
def test_matches_ref(op, case):
    p = make_problem(case)
    _check(op, op.inputs(p, torch.float32), torch.float32)


def _interleaved(t: torch.Tensor) -> torch.Tensor:
    """Same values, last dim with stride 2 (every element followed by a gap)."""
    return torch.stack([t, t], -1)[..., 0]


def _transposed(t: torch.Tensor) -> torch.Tensor:
    """Same values, dims 0 and 1 swapped in memory (e.g. a T-major [B, T, d])."""
    return t.transpose(0, 1).contiguous().transpose(0, 1) if t.dim() > 1 else _interleaved(t)


@pytest.mark.parametrize("layout", [_interleaved, _transposed], ids=["interleaved", "transposed"])
@pytest.mark.parametrize("op", OPS, ids=str)
def test_strided_inputs(op, layout):
    """Every input (y too: written in place through its strides) non-contiguous at once."""
    args = {k: layout(v) for k, v in op.inputs(make_problem(CASES[3]), torch.float32).items()}
    assert not any(v.is_contiguous() for v in args.values())
    _check(op, args, torch.float32, f" {layout.__name__[1:]}")


@pytest.mark.parametrize("op", OPS, ids=str)
def test_bf16(op):
    """bf16 factors and x (shrink) or y (expand); under the interpreter dots run in fp32."""
    _check(op, op.inputs(make_problem(CASES[2], dtype=torch.bfloat16), torch.bfloat16), torch.bfloat16)


# On CASES[1]: B 3, T 5, d_in 17, d_out 13, r 3, K 2, N 4, C 2. (op, input, change, error, message)
ERRORS = [
    ("compose_shrink", "lora_a", lambda t: t[..., :-1], ValueError,
     r"lora_a.shape\[2\] must equal d_in = x.shape\[2\] = 17"),
    ("compose_shrink", "row_cand", lambda t: t + 5, IndexError, r"row_cand values must lie in \[0, 2\)"),
    ("compose_shrink", "weights", lambda t: t.double(), TypeError, "weights must have dtype float32; got float64"),
    ("compose_expand", "y", lambda t: t[..., :-1], ValueError,
     r"y.shape\[2\] must equal d_out = lora_b.shape\[1\] = 13"),
    ("compose_expand", "h", lambda t: t[..., :-1], ValueError, r"h.shape\[2\] must equal r = lora_b.shape\[2\] = 3"),
    ("compose_expand", "module_idx", lambda t: t - 1, IndexError, r"module_idx values must lie in \[0, 4\)"),
    ("compose_delta", "lora_b", lambda t: t[..., :-1], ValueError, r"lora_b.shape\[2\] must equal the rank r"),
    ("compose_delta", "y", lambda t: t[:, :-1], ValueError, r"y must be \[B, T, d_out\] = \[3, 5, 13\]"),
    ("stacked_shrink", "x", lambda t: t[0], ValueError, r"x must be 3-D \[B, T, d_in\]; got shape \(5, 17\)"),
    ("stacked_shrink", "module_idx", lambda t: t.int(), TypeError, "module_idx must have dtype int64; got int32"),
    ("stacked_shrink", "weights", lambda t: t[:, :1], ValueError,
     r"weights must have the shape of module_idx \(2, 2\)"),
    ("stacked_expand", "h", lambda t: t[..., :-1], ValueError, r"h.shape\[2\] must equal K\*r .* = 6"),
    ("stacked_expand", "row_cand", lambda t: t[:-1], ValueError, r"row_cand.shape\[0\] must equal the batch size"),
    ("stacked_expand", "lora_b", lambda t: t.numpy(), TypeError, "lora_b must be a torch.Tensor"),
]


@pytest.mark.parametrize(("op_name", "name", "change", "error", "message"), ERRORS,
                         ids=[f"{e[0]}-{e[1]}-{e[3].__name__}" for e in ERRORS])
def test_errors(op_name, name, change, error, message):
    op = BY_NAME[op_name]
    args = op.inputs(make_problem(CASES[1], device="cpu"), torch.float32)
    args[name] = change(args[name])
    with pytest.raises(error, match=message):
        op.call(op.fn, args)


@pytest.mark.parametrize("op", OPS, ids=str)
def test_cpu_needs_interpreter(op, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    args = op.inputs(make_problem(CASES[1], device="cpu"), torch.float32)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        op.call(op.fn, args)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES[2:6] + GPU_CASES, ids=str)
@pytest.mark.parametrize("op", OPS, ids=str)
def test_cuda(op, case, dtype):
    p = make_problem(case, dtype=dtype, device="cuda")
    _check(op, op.inputs(p, dtype), dtype)
