"""bf16_ceiling: how far bf16 can speed up the engine's search on this CPU, from where its time goes.

The search's cost is one batched forward pass per CMA-ES generation (`Evaluator.losses`). This
script runs the same calls (the same candidates, examples and modules as `adapt_speed.py`) in
float32 and in bfloat16, in one process, alternating, under `torch.profiler`, and splits each
dtype's CPU time into matrix products (aten::mm/bmm/baddbmm/addmm) and everything else
(attention's softmax and copies, norms, SiLU, gathers, the LoRA term's indexing...). It reports:
- the measured speed-up, float32 time / bfloat16 time;
- the speed-up of the matrix products alone;
- the rate (GFLOP/s) of the linear layers' matrix products in each dtype: how far bf16's GEMMs
  are from fp32's at these shapes, whatever the other ops cost;
- the ceiling: float32 time / bfloat16 matrix-product time, i.e. the speed-up if every other op
  in bf16 cost nothing. A target above the ceiling cannot be reached by trimming the other ops;
  it needs faster bf16 GEMMs for these shapes (or fewer FLOPs).

    .venv/bin/python bench/bf16_ceiling.py [--model smollm2-135m] [--calls 4] [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

GEMM_OPS = {"aten::mm", "aten::bmm", "aten::baddbmm", "aten::addmm", "aten::baddbmm_"}


def profiled_seconds(call, n_calls: int) -> tuple[float, float, float, float]:
    """(wall s, matrix-product self-CPU s, other self-CPU s, GFLOP/s of the model's aten::mm) per
    call, over `n_calls` calls. The mm rate is 2·m·k·n over their self time, from the recorded
    input shapes: the linear layers' products, which bf16 is meant to speed up."""
    from torch.profiler import ProfilerActivity, profile

    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(n_calls):
            call()
    wall = (time.perf_counter() - t0) / n_calls
    gemm = other = mm_s = mm_flop = 0.0
    for ev in prof.key_averages(group_by_input_shape=True):
        s = ev.self_cpu_time_total / 1e6 / n_calls
        if ev.key in GEMM_OPS:
            gemm += s
        else:
            other += s
        shapes = ev.input_shapes
        if ev.key == "aten::mm" and len(shapes) >= 2 and len(shapes[0]) == 2 and len(shapes[1]) == 2:
            (m, k), (_, n) = shapes[0], shapes[1]
            mm_s += s
            mm_flop += 2.0 * m * k * n * ev.count / n_calls
    return wall, gemm, other, mm_flop / mm_s / 1e9 if mm_s else float("nan")


def main() -> None:
    import numpy as np
    import torch
    from _meta import write_result

    from lorahub_serve.data import tasks
    from lorahub_serve.engine.adapt import Engine
    from lorahub_serve.engine.search import SearchConfig
    from lorahub_serve.models import cpu_has_native_bf16, load_base, resolve_model
    from lorahub_serve.testing import random_hub

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--modules", type=int, default=20)
    ap.add_argument("--task", default="bbh/navigate")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--calls", type=int, default=4, help="profiled population calls per repeat and dtype")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not cpu_has_native_bf16():
        sys.exit("bf16_ceiling: this CPU has no native bf16 (AVX512-BF16/AMX); `--dtype auto` is fp32 here")
    torch.set_num_threads(args.threads)
    hub = Path(tempfile.mkdtemp(prefix="bench-hub-"))
    random_hub(load_base(resolve_model(args.model))[0], hub, n=args.modules, ranks=(8,),
               base_name=args.model, scale=0.25)
    examples = tasks.split(tasks.load_task(args.task), args.shots, 50, 0)[0]
    calls = {}
    pop = SearchConfig().population(args.modules)
    w = np.random.default_rng(0).uniform(-0.5, 0.5, (pop, args.modules)).astype(np.float32)
    for dtype in ("float32", "bfloat16"):
        eng = Engine(args.model, str(hub), dtype=dtype)
        idx = eng.module_indices(args.modules, 0)
        eng.evaluator.add_task("t", examples)

        def call(eng=eng, idx=idx):
            return eng.evaluator.losses(["t"] * pop, np.tile(idx, (pop, 1)), w)

        call()  # warm-up
        calls[dtype] = call
    load_before = os.getloadavg()[0]
    runs = {d: [] for d in calls}
    for _ in range(args.repeats):  # alternate, so machine noise hits both dtypes
        for d, call in calls.items():
            runs[d].append(profiled_seconds(call, args.calls))
    med = {d: tuple(statistics.median(r[i] for r in runs[d]) for i in range(4)) for d in runs}
    (f_wall, f_gemm, f_other, f_rate), (b_wall, b_gemm, b_other, b_rate) = med["float32"], med["bfloat16"]
    f_cpu, b_cpu = f_gemm + f_other, b_gemm + b_other
    figures = {
        "population": pop, "calls": args.calls, "repeats": args.repeats, "threads": args.threads,
        "load_before": load_before, "load_after": os.getloadavg()[0],
        "float32": {"wall_s": f_wall, "gemm_s": f_gemm, "other_s": f_other, "mm_gflops": f_rate},
        "bfloat16": {"wall_s": b_wall, "gemm_s": b_gemm, "other_s": b_other, "mm_gflops": b_rate},
        "speedup_wall": f_wall / b_wall, "speedup_cpu": f_cpu / b_cpu, "speedup_gemm": f_gemm / b_gemm,
        "ceiling": f_cpu / b_gemm, "gemm_share_float32": f_gemm / f_cpu, "gemm_share_bfloat16": b_gemm / b_cpu,
        "mm_rate_ratio": b_rate / f_rate,
    }
    md = f"""Median of {args.repeats} alternating repeats of {args.calls} profiled population calls each
(population {pop}, {args.modules} random rank-8 q,v modules, {args.shots} examples of {args.task},
{args.threads} threads). Load average {figures['load_before']:.2f} before, {figures['load_after']:.2f} after.
Self-CPU time of the profiled ops, per call:

| dtype | wall s | matrix products s | other ops s | matrix-product share | linear layers' mm, GFLOP/s |
|---|---|---|---|---|---|
| float32 | {f_wall:.3f} | {f_gemm:.3f} | {f_other:.3f} | {100 * f_gemm / f_cpu:.0f} % | {f_rate:.0f} |
| bfloat16 | {b_wall:.3f} | {b_gemm:.3f} | {b_other:.3f} | {100 * b_gemm / b_cpu:.0f} % | {b_rate:.0f} |

| speed-up of bf16 over fp32 | |
|---|---|
| measured (wall) | **{figures['speedup_wall']:.2f}x** |
| matrix products alone | {figures['speedup_gemm']:.2f}x |
| ceiling: every non-matrix op free in bf16 | **{figures['ceiling']:.2f}x** |
| the linear layers' mm rate, bf16 / fp32 | {b_rate / f_rate:.2f}x |
"""
    print(md)
    for p in write_result("bf16_ceiling", figures, md):
        print("wrote", p)


if __name__ == "__main__":
    main()
