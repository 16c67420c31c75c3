"""rg_schedule: how strong a reasoning-gym hub module gets at a few training schedules, and what
each costs (issue 34: "module strength first, by measurement").

For each task and each step count: a rank-8 q,v LoRA trained with the hub's recipe
(`hub.build.train_module`), then its held-out exact match (greedy, first line) and loss on
`--heldout` examples it never trained on, beside the base model's accuracy on the same examples.

    OMP_NUM_THREADS=1 .venv/bin/python bench/rg_schedule.py [--steps 40 120] [--dtype bfloat16] \
        [--tasks rg/basic_arithmetic@add-1d rg/word_sorting@short]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import torch
    from _meta import write_result

    from lorahub_serve.adapter_scoring import accuracy
    from lorahub_serve.data import tasks
    from lorahub_serve.eval.headroom_report import binomial_ci
    from lorahub_serve.hub.build import train_module
    from lorahub_serve.hub.train import TrainConfig, heldout_split
    from lorahub_serve.models import load_base, resolve_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", nargs="+", default=["rg/basic_arithmetic@add-1d", "rg/word_sorting@short"])
    ap.add_argument("--steps", nargs="+", type=int, default=[40, 120])
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--heldout", type=int, default=100)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    a = ap.parse_args()

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    net, tok = load_base(resolve_model(a.model))
    rows = []
    for task in a.tasks:
        exs = tasks.load_task(task)
        base_cfg = TrainConfig(heldout=a.heldout, max_length=a.max_length, dtype=a.dtype)
        _, _, held = heldout_split(tok, exs, base_cfg)
        _, base_acc = accuracy(net, tok, held, dtype=a.dtype)
        for steps in a.steps:
            cfg = TrainConfig(steps=steps, lr=a.lr, heldout=a.heldout, max_length=a.max_length, dtype=a.dtype)
            t0 = time.time()
            mod = train_module(net, tok, task, cfg)
            st = mod.stats or {}
            acc = st.get("heldout_accuracy")
            n = st.get("heldout_examples", 0)
            lo, hi = binomial_ci(round(acc / 100 * n), n) if acc is not None and n else (None, None)
            rows.append({"task": task, "steps": steps, "base_accuracy": round(base_acc, 1),
                         "heldout_accuracy": acc, "ci95": [lo, hi], "heldout_loss": st.get("heldout_loss"),
                         "heldout_examples": n, "seconds": round(time.time() - t0, 1),
                         "skipped": mod.skipped})
            print(rows[-1], flush=True)
    md = (f"{a.model}, rank-8 q,v LoRA, batch 8, lr {a.lr}, {a.dtype} autocast, "
          f"max_length {a.max_length}, 1 thread; held-out greedy exact match on {a.heldout} examples\n\n"
          "| task | steps | base | module (95 % CI) | held-out loss | seconds |\n|---|---|---|---|---|---|\n"
          + "".join(f"| {r['task']} | {r['steps']} | {r['base_accuracy']} | {r['heldout_accuracy']} "
                    f"({_pct(r['ci95'])}) | {r['heldout_loss']} | {r['seconds']} |\n" for r in rows))
    paths = write_result("rg_schedule", {"args": vars(a), "rows": rows,
                                         "loadavg": Path("/proc/loadavg").read_text().split()[:3]}, md)
    print(md)
    print("written:", *paths)


def _pct(ci) -> str:
    return "n/a" if ci[0] is None else f"{ci[0]:.0f}-{ci[1]:.0f}"


if __name__ == "__main__":
    main()
