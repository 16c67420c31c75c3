"""adapt_speed: evaluations/s of the batched engine vs the reference's sequential loop.

Same base model, K modules, few-shot examples and budget for both:
- reference: a faithful re-implementation of sail-sg/lorahub's loop — for each candidate, sum
  the modules' PEFT state dicts weighted by w, `set_peft_model_state_dict` into one PEFT model,
  run the examples through it (full logits, HF loss);
- engine: `Evaluator.losses` on whole CMA-ES populations (one batched forward pass per
  micro-batch, logits only where loss is taken, example-major packing).
Each mode runs in its own process so peak RSS is measured separately.

    .venv/bin/python bench/adapt_speed.py [--model smollm2-135m] [--hub DIR] [--budget 40]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _examples(task: str, shots: int, seed: int):
    from lorahub_serve.data import bigbench

    return bigbench.split(bigbench.load_task(task), shots, 50, seed)[0]


def _candidates(budget: int, k: int, seed: int):
    import numpy as np

    return np.random.default_rng(seed).uniform(-1.5, 1.5, size=(budget, k)).astype(np.float32)


def run_reference(args, q):
    import torch
    from peft import PeftModel, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    from lorahub_serve.engine.hub import read_manifest, select_modules
    from lorahub_serve.models import load_base, resolve_model
    from lorahub_serve.prompting import causal_batch, encode_example, pad_id

    torch.set_num_threads(args.threads)
    mods = select_modules(read_manifest(Path(args.hub)), args.modules, args.seed)
    base, tok = load_base(resolve_model(args.model))
    model = PeftModel.from_pretrained(base, mods[0].path).eval()
    cache = [load_peft_weights(str(m.path)) for m in mods]
    enc = [encode_example(tok, e) for e in _examples(args.task, args.shots, args.seed)]
    ids, mask, labels = causal_batch([(e.prompt_ids, e.target_ids) for e in enc], pad_id(tok))
    cands = _candidates(args.budget, len(mods), args.seed)
    t0 = time.perf_counter()
    losses = []
    for weights in cands:
        sd = {key: sum(float(wi) * c[key] for wi, c in zip(weights, cache)) for key in cache[0]}
        set_peft_model_state_dict(model, sd)
        with torch.inference_mode():
            losses.append(model(input_ids=ids, attention_mask=mask, labels=labels).loss.item())
    dt = time.perf_counter() - t0
    q.put({"evals_per_s": len(cands) / dt, "seconds": dt, "peak_rss_mb": _rss_mb(), "losses": losses})


def run_engine(args, q):
    import numpy as np
    import torch

    from lorahub_serve.engine.adapt import Engine
    from lorahub_serve.engine.search import SearchConfig

    torch.set_num_threads(args.threads)
    eng = Engine(args.model, args.hub, backend=args.backend, token_budget=args.token_budget)
    idx = eng.module_indices(args.modules, args.seed)
    eng.evaluator.add_task("t", _examples(args.task, args.shots, args.seed))
    cands = _candidates(args.budget, len(idx), args.seed)
    pop = SearchConfig().population(len(idx))
    t0 = time.perf_counter()
    losses = []
    for start in range(0, len(cands), pop):  # one CMA-ES generation per call, as in the search
        w = cands[start:start + pop]
        losses += list(eng.evaluator.losses(["t"] * len(w), np.tile(idx, (len(w), 1)), w))
    dt = time.perf_counter() - t0
    q.put({"evals_per_s": len(cands) / dt, "seconds": dt, "peak_rss_mb": _rss_mb(),
           "losses": [float(x) for x in losses], "population": pop})


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run(fn, args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(args, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--hub", default=None, help="hub folder (default: 20 random rank-8 q,v modules)")
    ap.add_argument("--modules", type=int, default=20)
    ap.add_argument("--task", default="navigate", help="BIG-bench task supplying the few-shot examples")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--budget", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--token-budget", type=int, default=8192)
    args = ap.parse_args()
    if args.hub is None:
        from lorahub_serve.models import load_base, resolve_model
        from lorahub_serve.testing import random_hub

        args.hub = tempfile.mkdtemp(prefix="bench-hub-")
        base, _ = load_base(resolve_model(args.model))
        random_hub(base, Path(args.hub), n=args.modules, ranks=(8,), base_name=args.model, scale=0.25)
        hub_desc = f"{args.modules} random rank-8 q,v modules"
    else:
        hub_desc = args.hub
    ref = _run(run_reference, args)
    eng = _run(run_engine, args)
    import numpy as np

    max_diff = float(np.max(np.abs(np.array(ref["losses"]) - np.array(eng["losses"]))))
    ratio = eng["evals_per_s"] / ref["evals_per_s"]
    figures = {
        "model": args.model, "hub": hub_desc, "k": args.modules, "examples": args.shots,
        "task": args.task, "budget": args.budget, "threads": args.threads, "backend": args.backend,
        "reference_evals_per_s": round(ref["evals_per_s"], 3), "engine_evals_per_s": round(eng["evals_per_s"], 3),
        "speedup": round(ratio, 2), "reference_peak_rss_mb": round(ref["peak_rss_mb"]),
        "engine_peak_rss_mb": round(eng["peak_rss_mb"]), "engine_population": eng["population"],
        "max_abs_loss_diff_vs_reference": max_diff,
    }
    md = (
        f"| mode | evaluations/s | peak RSS (MB) |\n|---|---|---|\n"
        f"| reference sequential loop (PEFT state dict per candidate) | {ref['evals_per_s']:.3f} | {ref['peak_rss_mb']:.0f} |\n"
        f"| lorahub-serve batched engine (population {eng['population']}) | {eng['evals_per_s']:.3f} | {eng['peak_rss_mb']:.0f} |\n\n"
        f"Speed-up: **{ratio:.2f}x** (same {args.budget} candidates; max |loss difference| {max_diff:.2e}). "
        f"{args.model}, {hub_desc}, K={args.modules}, {args.shots} examples of {args.task}, {args.threads} threads.\n"
    )
    from _meta import write_result

    paths = write_result("adapt_speed", figures, md)
    print(md)
    print(paths)


if __name__ == "__main__":
    main()
