"""`--dtype` through the engine, and the start-up warm-up batch."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lorahub_serve import adapt
from lorahub_serve.data import from_records
from lorahub_serve.engine.adapt import Engine
from lorahub_serve.engine.evaluator import warmup_examples
from lorahub_serve.models import CPU_BF16_ENV, cpu_has_native_bf16, load_base, resolve_dtype
from lorahub_serve.prompting import encode_example

# |bf16 - fp32| of a candidate's loss (losses here are about 4.6), absolute. Measured on this CPU
# (AMD EPYC, AVX512-BF16, torch backend): at most 1.0e-3 (2.2e-4 relative) for the 5 candidates
# below; over 20 draws of 5 candidates like them, at most 4.6e-3. The bound sits just above that.
BF16_LOSS_ATOL = 5e-3


AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile amx_int8\n"


def test_auto_dtype_is_bf16_on_cuda_and_native_bf16_cpus(monkeypatch):
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    assert resolve_dtype("auto", "cpu", cpuinfo=AVX2_ONLY) == "float32"  # bf16 emulated: slower
    assert resolve_dtype("auto", None, cpuinfo=AVX2_ONLY) == "float32"
    assert resolve_dtype("auto", "cpu", cpuinfo=ZEN4) == "bfloat16"
    assert resolve_dtype("auto", "cpu", cpuinfo=SAPPHIRE_RAPIDS) == "bfloat16"
    assert resolve_dtype("float32", "cpu", cpuinfo=ZEN4) == "float32"  # fp32 stays one flag away
    assert resolve_dtype("auto", "cuda:0", cpuinfo=AVX2_ONLY) == "bfloat16"
    assert not cpu_has_native_bf16("")  # no flags line: fp32
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert resolve_dtype("auto", "cpu", cpuinfo=AVX2_ONLY) == "bfloat16"
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert resolve_dtype("auto", "cpu", cpuinfo=ZEN4) == "float32"
    monkeypatch.setenv(CPU_BF16_ENV, "yes")
    with pytest.raises(ValueError, match="LORAHUB_SERVE_CPU_BF16 must be 0 or 1"):
        resolve_dtype("auto", "cpu", cpuinfo=ZEN4)


def test_auto_dtype_reads_this_machines_flags(monkeypatch):
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    info = Path("/proc/cpuinfo")
    flags = info.read_text() if info.exists() else ""
    native = any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))
    assert resolve_dtype("auto", "cpu") == ("bfloat16" if native else "float32")


def test_auto_dtype_is_bf16_on_cuda_fp32_on_cpu():
    assert resolve_dtype("auto", None) == "float32"  # the suite pins LORAHUB_SERVE_CPU_BF16=0
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("auto", "cuda:0") == "bfloat16"
    assert resolve_dtype("float16", "cpu") == "float16"
    with pytest.raises(ValueError, match="dtype must be one of .*got 'fp8'"):
        resolve_dtype("fp8", None)
    with pytest.raises(ValueError, match="load_base: dtype must be float32, bfloat16 or float16; got 'auto'"):
        load_base("unused", "auto")


def test_bf16_engine_losses_match_fp32(tiny_llama_dir, tiny_llama_hub, few_shot):
    rng = np.random.default_rng(0)
    w = rng.uniform(-1, 1, (5, 4)).astype(np.float32)
    idx = np.tile(np.arange(4), (5, 1))
    got = {}
    for dtype in ("float32", "bfloat16"):
        eng = Engine(tiny_llama_dir, tiny_llama_hub, dtype=dtype)
        try:
            assert eng.dtype == dtype and next(eng.net.parameters()).dtype == getattr(torch, dtype)
            assert all(a.dtype == getattr(torch, dtype) for a in eng.stack.lora_a.values())
            eng.evaluator.add_task("t", from_records(few_shot))
            got[dtype] = eng.evaluator.losses(["t"] * 5, idx, w)
        finally:
            eng.close()
    assert np.isfinite(got["bfloat16"]).all()
    assert not np.array_equal(got["bfloat16"], got["float32"])  # bf16 really ran
    np.testing.assert_allclose(got["bfloat16"], got["float32"], rtol=0, atol=BF16_LOSS_ATOL)
    # the candidates' order by loss is what the search uses; bf16 must keep clear gaps ordered
    best, second = np.sort(got["float32"])[:2]
    assert second - best > 2 * BF16_LOSS_ATOL  # a clear gap (0.021 here)
    assert np.argmin(got["bfloat16"]) == np.argmin(got["float32"])


def test_adapt_records_dtype(tiny_llama_dir, tiny_llama_hub, few_shot, tmp_path):
    out = tmp_path / "store" / "bf16-task"
    res = adapt(tiny_llama_dir, tiny_llama_hub, few_shot, out=out, budget=8, seed=1, dtype="bfloat16",
                progress=False)
    meta = json.loads((out / "lorahub.json").read_text())
    assert meta["dtype"] == "bfloat16"
    assert np.isfinite(res.best_loss)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_warmup_runs_every_layer_once_and_leaves_no_trace(tiny_llama_dir, tiny_llama_hub, backend):
    if backend == "triton":
        from lorahub_serve.kernels import available_backends

        if "triton" not in available_backends():
            pytest.skip("triton needs CUDA or TRITON_INTERPRET=1")
    calls = []  # perf_counter() at each adapted layer's forward
    eng = Engine(tiny_llama_dir, tiny_llama_hub, backend=backend, warmup=False)
    try:
        hooks = [m.register_forward_hook(lambda *_: calls.append(time.perf_counter()))
                 for m in eng.net.modules() if type(m).__name__ == "MultiLoraLinear"]
        t0 = time.perf_counter()
        seconds = eng.evaluator.warmup()
        wall = time.perf_counter() - t0
        for h in hooks:
            h.remove()
        ev = eng.evaluator
        # the time reported spans the warm-up's passes and no more than the call itself
        assert calls[-1] - calls[0] <= seconds <= wall and ev.warmup_seconds == seconds
        passes = len(warmup_examples(eng.tokenizer, ev.jit))  # Triton: one per token-block size
        assert passes == (3 if backend == "triton" else 1)
        assert len(calls) == passes * len(eng.stack.layers)  # through every adapted layer
        assert ev.evaluations == 0 and ev.seconds == pytest.approx(0, abs=1e-9)  # not charged to searches
        assert ev.tasks == {}  # its task is gone
        r = ev.handle.routing
        assert r.row_cand is None and r.module_idx is None and r.weights is None
    finally:
        eng.close()
    t0 = time.perf_counter()
    eng = Engine(tiny_llama_dir, tiny_llama_hub, backend=backend)  # warmup=True is the default
    wall = time.perf_counter() - t0
    try:
        assert 0 < eng.evaluator.warmup_seconds <= eng.startup_seconds <= wall
    finally:
        eng.close()


def test_triton_warmup_covers_every_token_block(tiny_llama_dir):
    """With Triton the warm-up rows reach each BLOCK_T bucket (<= 16, 17-32, >= 33 tokens), so no
    search compiles a kernel variant; the torch path warms up with one tiny row."""
    _, tok = load_base(tiny_llama_dir)
    rows = [encode_example(tok, ex).length - 1 for ex in warmup_examples(tok, jit=True)]
    assert [min(64, max(16, 1 << (n - 1).bit_length())) for n in rows] == [16, 32, 64], rows
    assert len(warmup_examples(tok, jit=False)) == 1
