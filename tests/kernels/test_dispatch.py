"""lora_delta: torch path against the refs and a dense-ΔW oracle; triton path against torch."""

import os
import subprocess
import sys

import pytest
import torch
from _compare import assert_close, requires_cuda
from _problems import CASES, GPU_CASES, Case, dense_delta, make_problem

from lorahub_serve.kernels import (
    available_backends,
    compose_expand_ref,
    compose_shrink_ref,
    lora_delta,
    stacked_expand_ref,
    stacked_shrink_ref,
)
from lorahub_serve.kernels.dispatch import _linear_torch_hub, _linear_torch_stacked

RULES = ["lorahub", "linear"]


def _args(p):
    return p.x, p.lora_a, p.lora_b, p.module_idx, p.weights, p.row_cand


def _refs_delta(p, rule):
    """lora_delta composed from the two *_ref ops of `rule`, in fp32."""
    b, t, _ = p.x.shape
    y = torch.zeros(b, t, p.lora_b.shape[1])
    if rule == "lorahub":
        h = compose_shrink_ref(p.x, p.lora_a, p.module_idx, p.weights, p.row_cand)
        return compose_expand_ref(h, p.lora_b, p.module_idx, p.weights, p.row_cand, y)
    h = stacked_shrink_ref(p.x, p.lora_a, p.module_idx, p.weights, p.row_cand)
    return stacked_expand_ref(h, p.lora_b, p.module_idx, p.row_cand, y)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_torch_matches_refs_and_dense_oracle(case, rule):
    p = make_problem(case)
    delta = lora_delta(*_args(p), rule, "torch")
    assert delta.shape == (case.B, case.T, case.d_out) and delta.dtype == torch.float32
    assert_close(delta, _refs_delta(p, rule), torch.float32, f"torch vs refs ({rule})")
    assert_close(delta, dense_delta(p, rule), torch.float32, f"torch vs dense ΔW ({rule})")


def test_refs_match_dense_oracle_with_many_rows_per_candidate():
    p = make_problem(Case(9, 4, 21, 15, 6, 7, 20, 3))  # B > C, N > 2K: per-candidate stacks
    for rule in RULES:
        assert_close(_refs_delta(p, rule), dense_delta(p, rule), torch.float32, rule)
        delta = lora_delta(*_args(p), rule, "torch")
        assert_close(delta, dense_delta(p, rule), torch.float32, rule)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("rule", RULES)
def test_out_accumulates_into_the_base_output_in_place(rule, backend):
    if backend not in available_backends():
        pytest.skip("triton needs CUDA or TRITON_INTERPRET=1")
    p = make_problem(Case(5, 3, 19, 13, 4, 3, 6, 2))
    base = torch.randn(5, 3, 13)
    out = base.clone()
    got = lora_delta(*_args(p), rule, backend, out=out)
    assert got is out  # accumulated in place, no new [B, T, d_out] tensor
    assert_close(out, base + dense_delta(p, rule), torch.float32, f"out += delta ({rule}, {backend})")
    with pytest.raises(ValueError, match=r"out must be a \[5, 3, 13\] torch.float32 tensor .*got \[5, 3, 12\]"):
        lora_delta(*_args(p), rule, backend, out=torch.zeros(5, 3, 12))


@pytest.mark.parametrize("path", [_linear_torch_hub, _linear_torch_stacked], ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_both_linear_torch_paths(case, path):
    """lora_delta picks one of two linear paths by hub size; check each on every case."""
    p = make_problem(case)
    assert_close(path(*_args(p)), dense_delta(p, "linear"), torch.float32, path.__name__)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("case", CASES[1:5] + CASES[6:8], ids=str)
def test_triton_matches_torch(case, rule):
    p = make_problem(case)
    want = lora_delta(*_args(p), rule, "torch")
    assert_close(lora_delta(*_args(p), rule, "triton"), want, torch.float32, f"triton ({rule})")


@pytest.mark.parametrize("case", CASES[1:5] + CASES[6:8], ids=str)
def test_fused_triton_matches_torch(case):
    """lorahub rule, `fused=True`: one compose_delta kernel instead of shrink + expand; into out too."""
    p = make_problem(case)
    want = lora_delta(*_args(p), "lorahub", "torch")
    assert_close(lora_delta(*_args(p), "lorahub", "triton", fused=True), want, torch.float32, "fused")
    base = torch.randn(want.shape)
    out = base.clone()
    assert lora_delta(*_args(p), "lorahub", "triton", out=out, fused=True) is out
    assert_close(out, base + want, torch.float32, "fused, into out")


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("rule", RULES)
def test_bf16(rule, backend):
    p = make_problem(CASES[2], dtype=torch.bfloat16)
    delta = lora_delta(*_args(p), rule, backend)
    assert delta.dtype == torch.bfloat16
    assert_close(delta, dense_delta(p, rule), torch.bfloat16, f"{backend} bf16 ({rule})")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_empty_batch(backend):
    p = make_problem(CASES[1])
    p.x, p.row_cand = p.x[:0], p.row_cand[:0]
    for rule in RULES:
        assert lora_delta(*_args(p), rule, backend).shape == (0, 5, 13)


def test_auto_uses_torch_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the interpreter would raise if reached
    p = make_problem(CASES[2], device="cpu")
    assert_close(lora_delta(*_args(p), "lorahub"), _refs_delta(p, "lorahub"), torch.float32)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        lora_delta(*_args(p), "lorahub", "triton")


def test_inference_mode():
    p = make_problem(CASES[2])
    with torch.inference_mode():
        for rule in RULES:
            delta = lora_delta(*_args(p), rule)
            assert delta.is_inference()
            assert_close(delta, dense_delta(p, rule), torch.float32, rule)


def test_available_backends(monkeypatch):
    assert "torch" in available_backends()
    assert "triton" in available_backends()  # CUDA, or the interpreter from conftest.py
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with_cuda = ("torch", "triton") if torch.cuda.is_available() else ("torch",)
    assert available_backends() == with_cuda


def _bad(name, exc, match, **change):
    """A bad-input case: `change` replaces arguments (a callable gets the problem)."""
    return pytest.param(change, exc, match, id=name)


IMPORTED_FIRST = """
import os, torch
from lorahub_serve.kernels import available_backends, compose_shrink, lora_delta
assert "TRITON_INTERPRET" not in os.environ
x, a, b = torch.randn(2, 3, 20), torch.randn(4, 5, 20), torch.randn(4, 7, 5)
idx, w, rc = torch.tensor([[0, 3], [2, 2]]), torch.randn(2, 2), torch.tensor([1, 0])
try:
    compose_shrink(x, a, idx, w, rc)
    raise AssertionError("no error on cpu without the interpreter")
except RuntimeError as e:
    assert "TRITON_INTERPRET=1" in str(e), e
if not torch.cuda.is_available():
    assert available_backends() == ("torch",)
want = {rule: lora_delta(x, a, b, idx, w, rc, rule) for rule in ("lorahub", "linear")}
os.environ["TRITON_INTERPRET"] = "1"  # set after triton and the kernels were imported
for rule in want:
    got = lora_delta(x, a, b, idx, w, rc, rule, "triton")
    torch.testing.assert_close(got, want[rule], atol=1e-4, rtol=1e-4)
"""


def test_kernels_imported_before_the_interpreter_was_enabled():
    """A fresh process: auto works without TRITON_INTERPRET, triton on cpu explains what to
    set, and setting it after the import (as conftest.py may) still runs the kernels."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", IMPORTED_FIRST], env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]


BAD_INPUTS = [  # on CASES[1]: N = 4, C = 2, K = 2, d_in = 17
    _bad("rule", ValueError, r"rule must be one of \('lorahub', 'linear'\); got 'sum'",
         rule="sum"),
    _bad("backend", ValueError, "backend must be one of", backend="cuda"),
    _bad("x-2d", ValueError, r"x must be 3-D \[B, T, d_in\]", x=lambda p: p.x[0]),
    _bad("x-int", TypeError, "x must have dtype float32 or bfloat16 or float16",
         x=lambda p: p.x.long()),
    _bad("lora_a-d_in", ValueError, r"lora_a.shape\[2\] must equal d_in",
         lora_a=lambda p: p.lora_a[:, :, 1:]),
    _bad("lora_b-rank", ValueError, r"lora_b.shape\[2\] must equal the rank",
         lora_b=lambda p: p.lora_b[:, :, 1:]),
    _bad("lora_b-N", ValueError, r"lora_b.shape\[0\] must equal N", lora_b=lambda p: p.lora_b[1:]),
    _bad("module_idx-range", IndexError, r"module_idx values must lie in \[0, 4\)",
         module_idx=lambda p: p.module_idx + 4),
    _bad("row_cand-negative", IndexError, r"row_cand values must lie in \[0, 2\)",
         row_cand=lambda p: -p.row_cand - 1),
    _bad("row_cand-length", ValueError, r"row_cand.shape\[0\] must equal",
         row_cand=lambda p: p.row_cand[1:]),
    _bad("row_cand-float", TypeError, "row_cand must have dtype int64",
         row_cand=lambda p: p.row_cand.float()),
    _bad("weights-dtype", TypeError, "weights must have dtype float32",
         weights=lambda p: p.weights.half()),
    _bad("weights-shape", ValueError, "weights must have the shape of module_idx",
         weights=lambda p: p.weights[:, :1]),
    _bad("K-zero", ValueError, "at least one candidate and one module",
         module_idx=lambda p: p.module_idx[:, :0]),
]


@pytest.mark.parametrize("change, exc, match", BAD_INPUTS)
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_bad_inputs_raise(change, exc, match, backend):
    p = make_problem(CASES[1])
    kw = vars(p) | {"rule": "lorahub", "backend": backend}
    kw |= {k: v(p) if callable(v) else v for k, v in change.items()}
    with pytest.raises(exc, match=match):
        lora_delta(**kw)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("case", CASES[2:6] + GPU_CASES, ids=str)
def test_cuda_triton_matches_torch_and_oracle(case, rule, dtype):
    p = make_problem(case, dtype=dtype, device="cuda")
    delta = lora_delta(*_args(p), rule)  # auto: triton on CUDA
    assert_close(delta, dense_delta(p, rule), dtype, f"cuda triton ({rule})")
    assert_close(lora_delta(*_args(p), rule, "torch"), dense_delta(p, rule), dtype, "cuda torch")


def test_compose_mixes_only_the_named_modules_and_matches_the_whole_hub():
    """A search names K of N hub modules: the CPU path (`named_mixing`) mixes those K rows, yet
    equals Σₖ w·factor over the whole hub (a repeated module sums its weights; modules no
    candidate names add nothing), as the [C, N] form does."""
    from lorahub_serve.kernels._mix import compose, named_mixing

    g = torch.Generator().manual_seed(0)
    factors = torch.randn(12, 4, 6, generator=g).to(torch.bfloat16)
    idx = torch.tensor([[3, 7, 7], [3, 0, 11]])
    w = torch.tensor([[0.5, -1.0, 0.25], [2.0, 0.0, -0.5]])
    want = torch.stack([sum(w[c, k] * factors[idx[c, k]].float() for k in range(3)) for c in range(2)])
    used, mix = named_mixing(idx, w)
    assert used.tolist() == [0, 3, 7, 11] and mix.shape == (2, 4)
    got = compose(factors, idx, w, mix, used)
    assert got.dtype == torch.float32 and got.shape == (2, 4, 6)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(compose(factors, idx, w), want, rtol=1e-6, atol=1e-6)  # the [C, N] form
    every = torch.arange(12).repeat(2, 1)  # all N named: the dense path
    w_all = torch.zeros(2, 12).scatter_add_(1, idx, w)
    torch.testing.assert_close(compose(factors, every, w_all), want, rtol=1e-6, atol=1e-6)
