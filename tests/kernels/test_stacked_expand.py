"""stacked_expand against stacked_expand_ref: interpreted on CPU, natively on CUDA."""

import pytest
import torch
from _compare import assert_close, requires_cuda
from _problems import CASES, GPU_CASES, make_problem
from lorahub_serve.kernels import stacked_expand, stacked_expand_ref


def _inputs(p, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    (b, t, _), k = p.x.shape, p.module_idx.shape[1]
    h = torch.randn(b, t, k * p.lora_a.shape[1], generator=g).to(p.x.device)
    y = torch.randn(b, t, p.lora_b.shape[1], generator=g).to(p.x.device, dtype)
    return h * k**-0.5, y


def _check(p, dtype):
    h, y = _inputs(p, dtype)
    want = stacked_expand_ref(h, p.lora_b, p.module_idx, p.row_cand, y.clone())
    out = stacked_expand(h, p.lora_b, p.module_idx, p.row_cand, y)
    assert out is y  # in place
    assert_close(y, want, dtype, "stacked_expand")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_ref(case):
    _check(make_problem(case), torch.float32)


def test_strided_inputs():
    p = make_problem(CASES[3])
    p.lora_b = p.lora_b.transpose(1, 2).contiguous().transpose(1, 2)
    h, y = _inputs(p, torch.float32)
    h = h.transpose(0, 1).contiguous().transpose(0, 1)
    want = stacked_expand_ref(h, p.lora_b, p.module_idx, p.row_cand, y.clone())
    stacked_expand(h, p.lora_b, p.module_idx, p.row_cand, y)
    assert_close(y, want, torch.float32, "stacked_expand strided")


def test_bf16_output():
    _check(make_problem(CASES[2], dtype=torch.bfloat16), torch.bfloat16)


def test_errors():
    p = make_problem(CASES[1])
    h, y = _inputs(p, torch.float32)
    with pytest.raises(ValueError, match=r"h.shape\[2\] must equal K\*r .* = 6"):
        stacked_expand(h[..., :-1], p.lora_b, p.module_idx, p.row_cand, y)
    with pytest.raises(ValueError, match=r"row_cand.shape\[0\] must equal the batch size"):
        stacked_expand(h, p.lora_b, p.module_idx, p.row_cand[:-1], y)
    with pytest.raises(TypeError, match="lora_b must be a torch.Tensor"):
        stacked_expand(h, p.lora_b.numpy(), p.module_idx, p.row_cand, y)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES[2:6] + GPU_CASES, ids=str)
def test_cuda(case, dtype):
    _check(make_problem(case, dtype=dtype, device="cuda"), dtype)
