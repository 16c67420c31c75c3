"""compose_shrink against compose_shrink_ref: interpreted on CPU, natively on CUDA."""

import pytest
import torch
from _compare import assert_close, requires_cuda
from _problems import CASES, GPU_CASES, make_problem
from lorahub_serve.kernels import compose_shrink, compose_shrink_ref


def _check(p, dtype):
    args = (p.x, p.lora_a, p.module_idx, p.weights, p.row_cand)
    h = compose_shrink(*args)
    assert h.dtype == torch.float32
    assert_close(h, compose_shrink_ref(*args), dtype, "compose_shrink")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_ref(case):
    _check(make_problem(case), torch.float32)


def test_strided_inputs():
    p = make_problem(CASES[3])
    p.x = p.x.transpose(0, 1).contiguous().transpose(0, 1)  # [B, T, d] view, T-major memory
    p.lora_a = p.lora_a.transpose(1, 2).contiguous().transpose(1, 2)
    p.weights = torch.cat([p.weights, p.weights], 1)[:, ::2]
    assert not (p.x.is_contiguous() or p.lora_a.is_contiguous() or p.weights.is_contiguous())
    _check(p, torch.float32)


def test_bf16_inputs():
    _check(make_problem(CASES[2], dtype=torch.bfloat16), torch.bfloat16)


def test_errors():
    p = make_problem(CASES[1])
    with pytest.raises(ValueError, match=r"lora_a.shape\[2\] must equal d_in = x.shape\[2\] = 17"):
        compose_shrink(p.x, p.lora_a[..., :-1], p.module_idx, p.weights, p.row_cand)
    with pytest.raises(IndexError, match=r"row_cand values must lie in \[0, 2\)"):
        compose_shrink(p.x, p.lora_a, p.module_idx, p.weights, p.row_cand + 5)
    with pytest.raises(TypeError, match="weights must have dtype float32; got float64"):
        compose_shrink(p.x, p.lora_a, p.module_idx, p.weights.double(), p.row_cand)


def test_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    p = make_problem(CASES[1], device="cpu")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        compose_shrink(p.x, p.lora_a, p.module_idx, p.weights, p.row_cand)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES[2:6] + GPU_CASES, ids=str)
def test_cuda(case, dtype):
    _check(make_problem(case, dtype=dtype, device="cuda"), dtype)
