"""compose_expand against compose_expand_ref: interpreted on CPU, natively on CUDA."""

import pytest
import torch
from _compare import assert_close, requires_cuda
from _problems import CASES, GPU_CASES, make_problem
from lorahub_serve.kernels import compose_expand, compose_expand_ref


def _inputs(p, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    b, t, _ = p.x.shape
    h = torch.randn(b, t, p.lora_a.shape[1], generator=g).to(p.x.device)  # fp32, as shrink gives
    y = torch.randn(b, t, p.lora_b.shape[1], generator=g).to(p.x.device, dtype)
    return h, y


def _check(p, dtype):
    h, y = _inputs(p, dtype)
    want = compose_expand_ref(h, p.lora_b, p.module_idx, p.weights, p.row_cand, y.clone())
    out = compose_expand(h, p.lora_b, p.module_idx, p.weights, p.row_cand, y)
    assert out is y  # in place
    assert_close(y, want, dtype, "compose_expand")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_ref(case):
    _check(make_problem(case), torch.float32)


def test_strided_inputs():
    p = make_problem(CASES[3])
    p.lora_b = p.lora_b.transpose(1, 2).contiguous().transpose(1, 2)
    p.module_idx = torch.cat([p.module_idx, p.module_idx], 1)[:, ::2]
    h, y = _inputs(p, torch.float32)
    h = h.transpose(0, 1).contiguous().transpose(0, 1)
    want = compose_expand_ref(h, p.lora_b, p.module_idx, p.weights, p.row_cand, y.clone())
    y_t = y.transpose(0, 1).contiguous().transpose(0, 1)  # strided output written in place
    compose_expand(h, p.lora_b, p.module_idx, p.weights, p.row_cand, y_t)
    assert_close(y_t, want, torch.float32, "compose_expand strided")


def test_bf16_output():
    _check(make_problem(CASES[2], dtype=torch.bfloat16), torch.bfloat16)


def test_errors():
    p = make_problem(CASES[1])
    h, y = _inputs(p, torch.float32)
    with pytest.raises(ValueError, match=r"y.shape\[2\] must equal d_out = lora_b.shape\[1\] = 13"):
        compose_expand(h, p.lora_b, p.module_idx, p.weights, p.row_cand, y[..., :-1])
    with pytest.raises(ValueError, match=r"h.shape\[2\] must equal r = lora_b.shape\[2\] = 3"):
        compose_expand(h[..., :-1], p.lora_b, p.module_idx, p.weights, p.row_cand, y)
    with pytest.raises(IndexError, match=r"module_idx values must lie in \[0, 4\)"):
        compose_expand(h, p.lora_b, p.module_idx - 1, p.weights, p.row_cand, y)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES[2:6] + GPU_CASES, ids=str)
def test_cuda(case, dtype):
    _check(make_problem(case, dtype=dtype, device="cuda"), dtype)
