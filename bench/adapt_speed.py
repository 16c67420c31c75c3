"""adapt_speed: the batched engine against the reference's sequential loop, on one device.

Same base model, K modules, few-shot examples, device and dtype for both:
- reference: a faithful re-implementation of sail-sg/lorahub's loop — nevergrad's NGOpt asks
  for a candidate, the modules' PEFT state dicts are summed weighted by w,
  `set_peft_model_state_dict` loads them into one PEFT model, the examples run through it (full
  logits, HF loss), the loss plus its L1 term is told back; then the recommendation is saved as a
  PEFT adapter;
- engine: `Evaluator.losses` on the reference's candidates in population-sized calls (one batched
  forward pass per micro-batch, logits only where loss is taken, example-major packing), and a
  real `Engine.adapt` at the budget (start batch + CMA-ES generations);
- whole process: the reference script and `lorahub-serve adapt` as fresh processes, wall time
  from launch to exit (imports, model load, start-up, search, export).
Figures are reported apart: start-up (model + hub load, warm-up), search evaluations/s, whole
process. Each mode runs in its own process so peak RSS is measured separately.

    .venv/bin/python bench/adapt_speed.py [--model smollm2-135m] [--hub DIR] [--budget 40] \
        [--device cpu|cuda] [--dtype auto|float32|bfloat16 | --dtypes auto,float32] [--repeats 3]

The reference's own rate moves by up to 20 % between runs on a shared CPU, so the script alternates
reference and engine `--repeats` times and reports each ratio's median and range.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _examples(task: str, shots: int, seed: int):
    from lorahub_serve.data import tasks

    return tasks.split(tasks.load_task(task), shots, 50, seed)[0]


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_reference(args, q):
    t_start = time.perf_counter()
    import numpy as np
    import torch
    from peft import PeftModel, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    from lorahub_serve.engine.hub import read_manifest, select_modules
    from lorahub_serve.light_imports import load_optimizers
    from lorahub_serve.models import load_base, resolve_dtype, resolve_model
    from lorahub_serve.prompting import causal_batch, encode_example, pad_id

    load_optimizers()  # the engine's own light import, so neither side pays more for nevergrad
    import nevergrad as ng

    torch.set_num_threads(args.threads)
    mods = select_modules(read_manifest(Path(args.hub)), args.modules, args.seed)
    base, tok = load_base(resolve_model(args.model), resolve_dtype(args.dtype, args.device))
    model = PeftModel.from_pretrained(base.to(args.device), mods[0].path).eval()
    cache = [{k: v.to(args.device) for k, v in load_peft_weights(str(m.path)).items()} for m in mods]
    enc = [encode_example(tok, e) for e in _examples(args.task, args.shots, args.seed)]
    ids, mask, labels = (t.to(args.device) for t in
                         causal_batch([(e.prompt_ids, e.target_ids) for e in enc], pad_id(tok)))
    k = len(mods)
    instrum = ng.p.Array(init=[0.0] * k, upper=[1.5] * k, lower=[-1.5] * k)
    instrum.random_state = np.random.RandomState(args.seed)
    opt = ng.optimizers.NGOpt(parametrization=instrum, budget=args.budget)  # sail-sg's optimiser
    cands, losses = [], []

    def step():  # sail-sg's loop body: ask, compose, set, evaluate, tell
        cand = opt.ask()
        weights = np.asarray(cand.value, dtype=np.float32)
        sd = {key: sum(float(wi) * c[key] for wi, c in zip(weights, cache)) for key in cache[0]}
        set_peft_model_state_dict(model, sd)
        with torch.inference_mode():
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
        opt.tell(cand, loss + 0.05 * float(np.abs(weights).mean()))  # its L1 term
        cands.append(weights)
        losses.append(loss)

    step()  # the first, cold evaluation is start-up (as the engine's warm-up is), not search time
    _sync(args.device)
    startup = time.perf_counter() - t_start
    t0 = time.perf_counter()
    for _ in range(args.budget - 1):
        step()
    _sync(args.device)
    dt = time.perf_counter() - t0
    best = np.asarray(opt.provide_recommendation().value, dtype=np.float32)
    set_peft_model_state_dict(model, {key: sum(float(wi) * c[key] for wi, c in zip(best, cache))
                                      for key in cache[0]})
    if args.out:
        model.save_pretrained(args.out)
    q.put({"evals_per_s": (len(cands) - 1) / dt, "seconds": dt, "startup_s": startup, "peak_rss_mb": _rss_mb(),
           "losses": losses, "candidates": np.stack(cands)})


def run_engine(args, q):
    import numpy as np
    import torch

    from lorahub_serve.engine.adapt import Engine
    from lorahub_serve.engine.search import SearchConfig

    torch.set_num_threads(args.threads)
    eng = Engine(args.model, args.hub, backend=args.backend, token_budget=args.token_budget,
                 device=args.device if args.device != "cpu" else None, dtype=args.dtype)
    idx = eng.module_indices(args.modules, args.seed)
    examples = _examples(args.task, args.shots, args.seed)
    eng.evaluator.add_task("t", examples)
    cands = args.candidates  # the reference's own NGOpt candidates
    pop = SearchConfig().population(len(idx))
    t0 = time.perf_counter()
    losses = []
    for start in range(0, len(cands), pop):  # one CMA-ES generation per call, as in the search
        w = cands[start:start + pop]
        losses += list(eng.evaluator.losses(["t"] * len(w), np.tile(idx, (len(w), 1)), w))
    dt = time.perf_counter() - t0
    t_task = time.perf_counter()  # a warm engine, one more task: encode, search, export
    res = eng.adapt(examples, task="speed", modules=args.modules, out=Path(args.out).parent / "engine-adapter",
                    config=SearchConfig(budget=args.budget, seed=args.seed), progress=False)
    task_s = time.perf_counter() - t_task
    q.put({"evals_per_s": len(cands) / dt, "seconds": dt, "peak_rss_mb": _rss_mb(),
           "losses": [float(x) for x in losses], "population": pop, "startup_s": eng.startup_seconds,
           "warmup_s": eng.evaluator.warmup_seconds, "dtype": eng.dtype,
           "search_evals_per_s": res.evals_per_second, "search_s": res.seconds, "task_s": task_s})


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run(fn, args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    t0 = time.perf_counter()
    p = ctx.Process(target=fn, args=(args, q))
    p.start()
    while True:  # a child that dies (bad data, out of memory) must end the benchmark, not hang it
        try:
            out = q.get(timeout=5)
            break
        except queue.Empty:
            if not p.is_alive():
                raise SystemExit(f"{fn.__name__} died (exit code {p.exitcode}) before reporting; see above")
    p.join()
    out["process_s"] = time.perf_counter() - t0
    return out


def _engine_process(args, workdir: Path) -> float:
    """Wall time of a fresh `lorahub-serve adapt` process at the budget."""
    ex = workdir / "examples.jsonl"
    ex.write_text("".join(json.dumps({"input": e.input, "output": e.output}) + "\n"
                          for e in _examples(args.task, args.shots, args.seed)))
    cmd = [sys.executable, "-m", "lorahub_serve.cli", "adapt", "--model", args.model, "--hub", args.hub,
           "--examples", str(ex), "--out", str(workdir / "store" / "speed"), "--budget", str(args.budget),
           "--seed", str(args.seed), "--modules", str(args.modules), "--dtype", args.dtype,
           "--backend", args.backend]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _run_figures(ref: dict, eng: dict, eng_process: float) -> dict:
    import numpy as np

    return {
        "reference_evals_per_s": ref["evals_per_s"], "engine_evals_per_s": eng["evals_per_s"],
        "engine_search_evals_per_s": eng["search_evals_per_s"], "warm_engine_task_s": eng["task_s"],
        "speedup_same_candidates": eng["evals_per_s"] / ref["evals_per_s"],
        "speedup_search": eng["search_evals_per_s"] / ref["evals_per_s"],
        "reference_startup_s": ref["startup_s"], "engine_startup_s": eng["startup_s"],
        "engine_warmup_s": eng["warmup_s"], "reference_process_s": ref["process_s"],
        "engine_process_s": eng_process, "speedup_process": ref["process_s"] / eng_process,
        "reference_peak_rss_mb": ref["peak_rss_mb"], "engine_peak_rss_mb": eng["peak_rss_mb"],
        "max_rel_loss_diff_vs_reference": float(np.max(np.abs(np.array(ref["losses"]) - np.array(eng["losses"]))
                                                       / np.abs(np.array(ref["losses"])))),
    }


def _stat(vals: list[float]) -> dict:
    import numpy as np

    return {"median": round(float(np.median(vals)), 3), "min": round(min(vals), 3), "max": round(max(vals), 3)}


def _medians(per_run: list[dict]) -> dict:
    import numpy as np

    return {k: round(float(np.median([r[k] for r in per_run])), 3) for k in per_run[0]}


def _cell(vals: list[float], fmt: str = ".3f") -> str:
    import numpy as np

    if len(vals) == 1:
        return f"{vals[0]:{fmt}}"
    return f"{np.median(vals):{fmt}} ({min(vals):{fmt}}–{max(vals):{fmt}})"


def _dtype_table(args, hub_desc: str, dtype: str, resolved: str, population: int, per_run: list[dict]) -> str:
    med = _medians(per_run)

    def cell(key: str, fmt: str = ".3f") -> str:
        return _cell([r[key] for r in per_run], fmt)

    return (
        f"### `--dtype {dtype}` ({resolved}): the engine against the reference loop\n\n"
        f"| measure | reference loop | engine | ratio |\n|---|---|---|---|\n"
        f"| evaluations/s, the reference's {args.budget} NGOpt candidates (engine: population {population} per call) "
        f"| {cell('reference_evals_per_s')} | {cell('engine_evals_per_s')} | **{cell('speedup_same_candidates', '.2f')}x** |\n"
        f"| evaluations/s in a real search at budget {args.budget} (start batch + CMA-ES) "
        f"| {cell('reference_evals_per_s')} | {cell('engine_search_evals_per_s')} | **{cell('speedup_search', '.2f')}x** |\n"
        f"| a warm engine adapts one more task at budget {args.budget} (encode, search, export), s "
        f"| | {cell('warm_engine_task_s', '.2f')} | |\n"
        f"| start-up s (model + hub load; engine: + warm-up {med['engine_warmup_s']:.2f} s) "
        f"| {cell('reference_startup_s', '.2f')} | {cell('engine_startup_s', '.2f')} | |\n"
        f"| whole process s (fresh process: imports, load, search, export) "
        f"| {cell('reference_process_s', '.2f')} | {cell('engine_process_s', '.2f')} | **{cell('speedup_process', '.2f')}x** |\n"
        f"| peak RSS MB | {med['reference_peak_rss_mb']:.0f} | {med['engine_peak_rss_mb']:.0f} | |\n\n"
        f"{args.model}, {hub_desc}, K={args.modules}, {args.shots} examples of {args.task}, "
        f"device {args.device}, {resolved}, {args.threads} threads; max relative loss difference "
        f"on the same candidates {med['max_rel_loss_diff_vs_reference']:.1e}.\n"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--hub", default=None, help="hub folder (default: 20 random rank-8 q,v modules)")
    ap.add_argument("--modules", type=int, default=20)
    ap.add_argument("--task", default="bbh/navigate", help="task supplying the few-shot examples (`data list`)")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--budget", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--dtype", default="auto",
                    help="auto: bf16 on CUDA and on CPUs with native bf16, else fp32 (both modes)")
    ap.add_argument("--dtypes", default=None,
                    help="comma list, e.g. auto,float32: each dtype in turn in every repeat, and the "
                         "first's speed-up over the second")
    ap.add_argument("--token-budget", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="alternating reference/engine runs (median reported)")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.hub is None:
        from lorahub_serve.models import load_base, resolve_model
        from lorahub_serve.testing import random_hub

        args.hub = tempfile.mkdtemp(prefix="bench-hub-")
        base, _ = load_base(resolve_model(args.model))
        random_hub(base, Path(args.hub), n=args.modules, ranks=(8,), base_name=args.model, scale=0.25)
        hub_desc = f"{args.modules} random rank-8 q,v modules"
    else:
        hub_desc = args.hub
    dtypes = [d.strip() for d in (args.dtypes or args.dtype).split(",") if d.strip()]
    runs: dict[str, list] = {d: [] for d in dtypes}
    with tempfile.TemporaryDirectory(prefix="adapt-speed-") as tmp:
        for _ in range(args.repeats):  # reference and engine alternate: drift hits both alike
            for dtype in dtypes:  # each dtype: the reference and the engine in that dtype
                a = argparse.Namespace(**{**vars(args), "dtype": dtype,
                                          "out": str(Path(tmp) / f"reference-adapter-{dtype}")})
                ref = _run(run_reference, a)
                a.candidates = ref["candidates"]
                eng = _run(run_engine, a)
                runs[dtype].append((ref, eng, _engine_process(a, Path(tmp))))
    load = os.getloadavg()[0]
    figures = {"model": args.model, "hub": hub_desc, "k": args.modules, "examples": args.shots,
               "task": args.task, "budget": args.budget, "threads": args.threads,
               "backend": args.backend, "device": args.device, "loadavg_before": load_before,
               "loadavg_after": load, "repeats": args.repeats, "dtypes": {}}
    md = [(f"Median of {args.repeats} alternating run(s), range in brackets; each ratio is taken "
           f"within one run. Load average {load_before:.2f} before, {load:.2f} after.\n")]
    for dtype in dtypes:
        per_run = [_run_figures(ref, eng, proc) for ref, eng, proc in runs[dtype]]
        resolved = runs[dtype][0][1]["dtype"]
        figures["dtypes"][dtype] = {"resolved": resolved, "engine_population": runs[dtype][0][1]["population"],
                                    **_medians(per_run), "runs": per_run}
        md.append(_dtype_table(args, hub_desc, dtype, resolved, runs[dtype][0][1]["population"], per_run))
    if len(dtypes) == 2:
        fast, slow = dtypes
        pairs = list(zip(runs[fast], runs[slow]))
        ratio = {"search_evals_per_s": [f[1]["search_evals_per_s"] / s[1]["search_evals_per_s"] for f, s in pairs],
                 "same_candidates_evals_per_s": [f[1]["evals_per_s"] / s[1]["evals_per_s"] for f, s in pairs],
                 "warm_task_s": [s[1]["task_s"] / f[1]["task_s"] for f, s in pairs],
                 "process_s": [s[2] / f[2] for f, s in pairs]}
        figures["dtype_speedup"] = {"of": fast, "over": slow, **{k: _stat(v) for k, v in ratio.items()}}
        md.append(f"### `--dtype {fast}` ({runs[fast][0][1]['dtype']}) against `--dtype {slow}` "
                  f"({runs[slow][0][1]['dtype']}), engine only\n\n| measure | speed-up |\n|---|---|\n"
                  + "".join(f"| {label} | **{_cell(ratio[key], '.2f')}x** |\n" for key, label in (
                      ("search_evals_per_s", f"evaluations/s in a real search at budget {args.budget}"),
                      ("same_candidates_evals_per_s", "evaluations/s on the reference's candidates"),
                      ("warm_task_s", "a warm engine adapts one more task (encode, search, export)"),
                      ("process_s", "whole `lorahub-serve adapt` process (imports, load, search, export)"))))
    md = "\n".join(md)
    from _meta import write_result

    paths = write_result("adapt_speed", figures, md)
    print(md)
    print(paths)


if __name__ == "__main__":
    main()
