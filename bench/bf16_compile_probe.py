"""bf16_compile_probe: would fusing the non-GEMM ops (torch.compile) lift bf16's speed-up past 2.5x?

`bf16_ceiling.py` found the engine's bf16 search call ~2.3x faster than fp32 on this CPU, with
bf16's matrix products near the machine's rate and the rest of the time in many small non-GEMM
ops (norms, SiLU·mul, RoPE, softmax, copies). torch.compile (inductor, C++ backend on CPU) fuses
those. This probe measures the best case: the plain base model's decoder body (no LoRA term, no
block attention: the parts of the engine that compile does not yet see through) on one fixed
batch shape like a search call's, eager and compiled, in fp32 and in bf16, and the compile time.
If even this bound stays under 2.5x, compiling the engine cannot reach the target.

    .venv/bin/python bench/bf16_compile_probe.py [--batch 8] [--width 256] [--calls 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def timed(fn, calls: int) -> float:
    """Median seconds of `calls` calls (after one untimed call)."""
    fn()
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    import torch
    from _meta import write_result

    from lorahub_serve.models import load_base, resolve_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ids = torch.randint(100, 20000, (a.batch, a.width))
    load_before = os.getloadavg()[0]
    figures: dict = {"batch": a.batch, "width": a.width, "calls": a.calls, "threads": a.threads,
                     "load_before": load_before}
    for dtype in (torch.float32, torch.bfloat16):
        net, _ = load_base(resolve_model(a.model))
        body = getattr(net, net.base_model_prefix).to(dtype).eval()
        name = str(dtype).removeprefix("torch.")
        with torch.inference_mode():
            eager = timed(lambda body=body: body(input_ids=ids).last_hidden_state, a.calls)
            compiled_body = torch.compile(body, dynamic=False)
            t0 = time.perf_counter()
            compiled_body(input_ids=ids)
            compile_s = time.perf_counter() - t0
            compiled = timed(lambda f=compiled_body: f(input_ids=ids).last_hidden_state, a.calls)
        figures[name] = {"eager_s": eager, "compiled_s": compiled, "compile_s": compile_s}
        print(name, figures[name], flush=True)
        torch._dynamo.reset()
    f, b = figures["float32"], figures["bfloat16"]
    figures.update(load_after=os.getloadavg()[0], speedup_eager=f["eager_s"] / b["eager_s"],
                   speedup_compiled=f["compiled_s"] / b["compiled_s"],
                   speedup_compiled_bf16_vs_eager_fp32=f["eager_s"] / b["compiled_s"])
    md = f"""The base model's decoder body alone (no LoRA term, no block attention), ids [{a.batch}, {a.width}],
{a.threads} threads, median of {a.calls} calls after one; load average {load_before:.2f} before,
{figures['load_after']:.2f} after.

| dtype | eager s | compiled s | compile s |
|---|---|---|---|
| float32 | {f['eager_s']:.3f} | {f['compiled_s']:.3f} | {f['compile_s']:.0f} |
| bfloat16 | {b['eager_s']:.3f} | {b['compiled_s']:.3f} | {b['compile_s']:.0f} |

| bf16 speed-up over fp32 | |
|---|---|
| eager, both | **{figures['speedup_eager']:.2f}x** |
| compiled, both | **{figures['speedup_compiled']:.2f}x** |
| compiled bf16 against eager fp32 (not a like-for-like ratio) | {figures['speedup_compiled_bf16_vs_eager_fp32']:.2f}x |
"""
    print(md)
    for p in write_result("bf16_compile_probe", figures, md):
        print("wrote", p)


if __name__ == "__main__":
    main()
