"""stacked_shrink against stacked_shrink_ref: interpreted on CPU, natively on CUDA."""

import pytest
import torch
from _compare import assert_close, requires_cuda
from _problems import CASES, GPU_CASES, make_problem
from lorahub_serve.kernels import stacked_shrink, stacked_shrink_ref


def _check(p, dtype):
    args = (p.x, p.lora_a, p.module_idx, p.weights, p.row_cand)
    h = stacked_shrink(*args)
    assert h.dtype == torch.float32
    assert_close(h, stacked_shrink_ref(*args), dtype, "stacked_shrink")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_ref(case):
    _check(make_problem(case), torch.float32)


def test_strided_inputs():
    p = make_problem(CASES[3])
    p.x = p.x.transpose(0, 1).contiguous().transpose(0, 1)
    p.lora_a = p.lora_a.transpose(1, 2).contiguous().transpose(1, 2)
    p.row_cand = torch.stack([p.row_cand, p.row_cand], 1)[:, 0]
    assert not (p.x.is_contiguous() or p.lora_a.is_contiguous() or p.row_cand.is_contiguous())
    _check(p, torch.float32)


def test_bf16_inputs():
    _check(make_problem(CASES[2], dtype=torch.bfloat16), torch.bfloat16)


def test_errors():
    p = make_problem(CASES[1])
    with pytest.raises(ValueError, match=r"x must be 3-D \[B, T, d_in\]; got shape \(5, 17\)"):
        stacked_shrink(p.x[0], p.lora_a, p.module_idx, p.weights, p.row_cand)
    with pytest.raises(TypeError, match="module_idx must have dtype int64; got int32"):
        stacked_shrink(p.x, p.lora_a, p.module_idx.int(), p.weights, p.row_cand)
    with pytest.raises(ValueError, match=r"weights must have the shape of module_idx \(2, 2\)"):
        stacked_shrink(p.x, p.lora_a, p.module_idx, p.weights[:, :1], p.row_cand)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES[2:6] + GPU_CASES, ids=str)
def test_cuda(case, dtype):
    _check(make_problem(case, dtype=dtype, device="cuda"), dtype)
