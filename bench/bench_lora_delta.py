"""Benchmark lora_delta: the Triton kernels against the plain-torch path (the baseline).

Shapes of SmolLM2-135M's adapted layers (q: 576 -> 576, v: 576 -> 192), hub of N=20 rank-8
modules, K=20 per candidate, P candidates with a few rows of T tokens each. Reports time per
call of each backend (CUDA events on a GPU, wall clock on CPU), their ratio, and what each
achieves: GFLOP/s of the shrink+expand maths and GB/s of the minimum traffic (x, the hub factors
the batch names, the output), and writes JSON + markdown to bench/results/.

Triton needs CUDA; on CPU only the torch path runs unless --interpret (Triton's interpreter:
correct but orders of magnitude slower, so only useful with small --P).

    python bench/bench_lora_delta.py                      # all P, both rules
    python bench/bench_lora_delta.py --P 1,4 --interpret  # CPU, interpreted kernels
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

LAYERS = {"q_proj": (576, 576), "v_proj": (576, 192)}  # name: (d_in, d_out)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--P", default="1,4,16,32,64", help="candidate counts, comma-separated")
    ap.add_argument("--rows", type=int, default=3, help="batch rows per candidate")
    ap.add_argument("--T", type=int, default=66, help="tokens per row")
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--K", type=int, default=20)
    ap.add_argument("--N", type=int, default=20)
    ap.add_argument("--rules", default="lorahub,lorahub-fused,linear",
                    help="lorahub-fused: the lorahub rule's Triton path as one kernel (compose_delta)")
    ap.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                    help="auto: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--reps", type=int, default=None, help="timed calls (default 50 CUDA, 10 CPU)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--interpret", action="store_true",
                    help="on CPU, also time the Triton kernels under TRITON_INTERPRET=1")
    ap.add_argument("--no-write", action="store_true", help="print only, write no result files")
    return ap.parse_args(argv)


def time_call(fn, reps: int, warmup: int, cuda: bool) -> float:
    """Median seconds per call: CUDA events around each call on a GPU (device time, no host
    sync inside the timed region), perf_counter on CPU."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    if cuda:
        torch.cuda.synchronize()
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return statistics.median(times)
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def work(rule: str, inp: dict) -> tuple[float, float]:
    """(FLOPs, minimum bytes) of one lora_delta call: the shrink and expand GEMMs (rank r for the
    lorahub rule, K·r for linear) plus composing each candidate's factors; bytes read and written
    at least once (x, the distinct hub factors named, the output)."""
    x, a, b = inp["x"], inp["lora_a"], inp["lora_b"]
    (rows, t, d_in), (n, r, _), d_out = x.shape, a.shape, b.shape[1]
    p, k = inp["module_idx"].shape
    lorahub = rule.startswith("lorahub")
    rank = r if lorahub else k * r
    flops = 2 * rows * t * rank * (d_in + d_out)
    if lorahub:
        flops += 2 * p * k * r * (d_in + d_out)  # Σₖ wₖAₖ and Σₖ wₖBₖ per candidate
    used = min(n, int(inp["module_idx"].unique().numel()))
    el = x.element_size()
    traffic = el * (rows * t * (d_in + d_out) + used * r * (d_in + d_out))
    return float(flops), float(traffic)


def make_inputs(p: int, d_in: int, d_out: int, args, dtype, device) -> dict:
    """lora_delta's tensor arguments for P candidates of distinct modules (as LoraHub samples)."""
    import torch

    g = torch.Generator().manual_seed(0)
    if args.K <= args.N:
        idx = torch.stack([torch.randperm(args.N, generator=g)[: args.K] for _ in range(p)])
    else:
        idx = torch.randint(0, args.N, (p, args.K), generator=g)
    return {
        "x": torch.randn(p * args.rows, args.T, d_in, generator=g).to(device, dtype),
        "lora_a": (torch.randn(args.N, args.r, d_in, generator=g) * d_in**-0.5).to(device, dtype),
        "lora_b": (torch.randn(args.N, d_out, args.r, generator=g) * 0.1).to(device, dtype),
        "module_idx": idx.to(device),
        "weights": (torch.randn(p, args.K, generator=g) * 0.3).to(device),
        "row_cand": torch.arange(p).repeat_interleave(args.rows).to(device),
    }


def bench_one(rule: str, inp: dict, reps: int, warmup: int, cuda: bool, run_triton: bool):
    """(torch s/call, triton s/call or None, max |triton - torch| or None) for one shape."""
    import torch

    from lorahub_serve.kernels import lora_delta

    fused = rule == "lorahub-fused"

    def call(backend):
        return lora_delta(**inp, rule="lorahub" if fused else rule, backend=backend, check_indices=False,
                          fused=fused)

    with torch.inference_mode():
        t_torch = time_call(lambda: call("torch"), reps, warmup, cuda)
        if not run_triton:
            return t_torch, None, None
        t_triton = time_call(lambda: call("triton"), reps, warmup, cuda)
        err = (call("triton").float() - call("torch").float()).abs().max().item()
    return t_torch, t_triton, err


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.interpret:  # must precede the first import of triton
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = "cuda" if cuda else "cpu"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
             "auto": torch.bfloat16 if cuda else torch.float32}[args.dtype]
    reps = args.reps or (50 if cuda else 10)
    run_triton = cuda or args.interpret
    rows, lines = [], []
    for rule in args.rules.split(","):
        for layer, (d_in, d_out) in LAYERS.items():
            for p in (int(s) for s in args.P.split(",")):
                inp = make_inputs(p, d_in, d_out, args, dtype, device)
                t_torch, t_triton, err = bench_one(rule, inp, reps, args.warmup, cuda, run_triton)
                flops, traffic = work(rule, inp)
                best = t_torch if t_triton is None else min(t_torch, t_triton)
                rows.append({
                    "gflops_torch": flops / t_torch / 1e9,
                    "gflops_triton": None if t_triton is None else flops / t_triton / 1e9,
                    "gbps_best": traffic / best / 1e9,
                    "rule": rule, "layer": layer, "P": p, "B": p * args.rows,
                    "torch_ms": t_torch * 1e3,
                    "triton_ms": None if t_triton is None else t_triton * 1e3,
                    "torch_over_triton": None if t_triton is None else t_torch / t_triton,
                    "max_abs_diff": err,
                })
                lines.append(_md_row(rows[-1]))
                print(lines[-1], flush=True)
    config = {k: v for k, v in vars(args).items() if k != "no_write"}
    config.update(device=device, dtype=str(dtype).replace("torch.", ""), reps=reps)
    note = "" if run_triton else "\nTriton not run: it needs CUDA (or --interpret on CPU).\n"
    md = (f"Config: `{config}`\n{note}\n| rule | layer | P | B | torch ms | triton ms | "
          "torch/triton | GFLOP/s torch | GFLOP/s triton | GB/s (faster) | max abs diff |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(lines))
    if not args.no_write:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from _meta import write_result

        paths = write_result("bench_lora_delta", {"config": config, "rows": rows}, md)
        print("wrote", *map(str, paths))
    return 0


def _md_row(r: dict) -> str:
    def f(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    return (f"| {r['rule']} | {r['layer']} | {r['P']} | {r['B']} | {r['torch_ms']:.3f} | "
            f"{f(r['triton_ms'], '.3f')} | {f(r['torch_over_triton'], '.2f')} | "
            f"{r['gflops_torch']:.1f} | {f(r['gflops_triton'], '.1f')} | {r['gbps_best']:.1f} | "
            f"{f(r['max_abs_diff'], '.2e')} |")


if __name__ == "__main__":
    sys.exit(main())
