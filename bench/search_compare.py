"""search_compare: which batch-asking optimiser reaches the lowest few-shot objective per budget.

Same engine, hub, K modules and few-shot examples for every optimiser; objective = few-shot
loss + 0.05·mean|w| (lower is better). Each (task, seed) gets one memo of evaluated weight
vectors, so the shared start batch (w = 0 and the one-hots) is paid once. Budgets below the
largest are read from each run's history (best objective within the first B evaluations);
population sizes are fixed per configuration so that prefix equals a run at that budget
(NGOpt picks its method by budget, so it runs at each budget separately).

    .venv/bin/python bench/search_compare.py [--tasks ...] [--seeds 1] [--budgets 40 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _meta import write_result

from lorahub_serve.eval.run import BBH_TABLE_TASKS

# name -> SearchConfig fields (budget and seed added per run)
CONFIGS: dict[str, dict] = {
    "old default (bounded CMA, pop 12, no start)": {"onehot_start": False, "sigma": 0.075, "popsize": 12},
    "CMA σ0.5 pop6, no start": {"onehot_start": False, "sigma": 0.5, "popsize": 6},
    "start + CMA σ0.3 pop4": {"sigma": 0.3, "popsize": 4},
    "start + CMA σ1.0 pop4": {"sigma": 1.0, "popsize": 4},
    "start + CMA σ0.1 pop4": {"sigma": 0.1, "popsize": 4},
    "start + DE pop4": {"optimizer": "de", "popsize": 4},
    "start + line + CMA σ0.1 pop4": {"sigma": 0.1, "popsize": 4},
    "start + line + CMA σ0.3 pop4": {"sigma": 0.3, "popsize": 4},
    "start + line + CMA σ0.5 pop4": {"sigma": 0.5, "popsize": 4},
    "NGOpt (reference)": {"optimizer": "ngopt"},
}
TASKS = BBH_TABLE_TASKS


def memo_loss(engine, key: str, idx: list[int], cache: dict, seen: list):
    """weights [P, K] -> losses [P]; only unseen vectors reach the engine (one batch). Every
    vector asked is appended to `seen`, in order."""
    def loss(w: np.ndarray) -> np.ndarray:
        seen.extend(np.asarray(w, dtype=np.float64))
        keys = [row.tobytes() for row in np.round(w, 12)]
        todo = [i for i, k in enumerate(keys) if k not in cache]
        if todo:
            got = engine.evaluator.losses([key] * len(todo), np.tile(idx, (len(todo), 1)), w[todo])
            cache.update({keys[i]: float(v) for i, v in zip(todo, got)})
        return np.array([cache[k] for k in keys])
    return loss


def rc_of(engine, idx, weights: list[np.ndarray], evalset) -> list[float | None]:
    """Rank-classification accuracy (percent) of each weight vector on `evalset`."""
    from lorahub_serve.eval.rank_classification import Method, rank_classification

    methods = {str(i): Method([e.input for e in evalset], w) for i, w in enumerate(weights)}
    got = rank_classification(engine.evaluator, idx, methods, evalset, tag="cmp")
    return [got[str(i)] for i in range(len(weights))]


def run(args) -> dict:
    from lorahub_serve.data import tasks
    from lorahub_serve.engine.adapt import Engine
    from lorahub_serve.engine.search import SearchConfig, run_search

    engine = Engine(args.model, args.hub)
    top = max(args.budgets)
    rows = []
    for task in args.tasks:
        for seed in args.seeds:
            shots, evalset = tasks.split(tasks.load_task(task), 5, 50, seed)  # the BBH table's split
            evalset = evalset[:args.rc]
            key = f"{task}@{seed}"
            engine.evaluator.add_task(key, shots)
            idx = engine.module_indices(min(20, len(engine.hub_modules)), seed)
            cache: dict = {}
            for name, fields in CONFIGS.items():
                sequential = fields.get("optimizer") == "ngopt"
                for b in (args.budgets if sequential else [top]):
                    t0, n0, seen = time.perf_counter(), len(cache), []
                    st = run_search(memo_loss(engine, key, idx, cache, seen), len(idx),
                                    SearchConfig(budget=b, seed=seed, **fields))
                    seconds = time.perf_counter() - t0
                    hist = np.minimum.accumulate(st.history)
                    marks = [bb for bb in ([b] if sequential else args.budgets) if bb <= len(hist)]
                    best = [seen[int(np.argmin(st.history[:bb]))] for bb in marks]
                    accs = rc_of(engine, idx, best, evalset) if args.rc else [None] * len(marks)
                    for bb, acc in zip(marks, accs):
                        rows.append({"task": task, "seed": seed, "config": name, "budget": bb,
                                     "objective": round(float(hist[bb - 1]), 4), "rc_accuracy": acc,
                                     "search_seconds": round(seconds * bb / b, 1)})
                    print(f"{task}@{seed} {name} budget {b}: {hist[-1]:.4f} "
                          f"({len(cache) - n0} new evaluations, {time.perf_counter() - t0:.0f} s)", flush=True)
    engine.close()
    return {"rows": rows}


def table(rows: list[dict], budgets: list[int]) -> str:
    """Mean objective per configuration and budget, and wins against NGOpt at equal budget."""
    ref = {(r["task"], r["seed"], r["budget"]): r["objective"] for r in rows if r["config"].startswith("NGOpt")}
    head = "| optimiser | " + " | ".join(f"objective @{b} | ≤ NGOpt @{b} | RC acc @{b}" for b in budgets) + " |"
    lines = [head, "|---|" + "---|---|---|" * len(budgets)]
    for name in CONFIGS:
        cells = []
        for b in budgets:
            rs = [r for r in rows if r["config"] == name and r["budget"] == b]
            if not rs:
                cells += ["-", "-", "-"]
                continue
            wins = sum(r["objective"] <= ref.get((r["task"], r["seed"], b), np.inf) + 1e-6 for r in rs)
            accs = [r["rc_accuracy"] for r in rs if r.get("rc_accuracy") is not None]
            cells += [f"{statistics.mean(r['objective'] for r in rs):.4f}", f"{wins}/{len(rs)}",
                      f"{statistics.mean(accs):.1f}" if accs else "-"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--hub", default="hubs/smollm2-135m")
    ap.add_argument("--tasks", nargs="*", default=list(TASKS))
    ap.add_argument("--seeds", nargs="*", type=int, default=[1])
    ap.add_argument("--budgets", nargs="*", type=int, default=[40, 100])
    ap.add_argument("--configs", nargs="*", default=None, help="substrings of configuration names to run")
    ap.add_argument("--rc", type=int, default=30,
                    help="held-out examples for rank-classification accuracy of each result (0: none)")
    args = ap.parse_args()
    if args.configs:
        for name in list(CONFIGS):
            if not any(c in name for c in args.configs):
                CONFIGS.pop(name)
    t0 = time.perf_counter()
    figures = run(args)
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    md = (f"Few-shot objective (loss + 0.05·mean|w|, lower is better), K=20, 5 shots, tasks "
          f"{', '.join(args.tasks)}, seeds {args.seeds}.\n\n{table(figures['rows'], args.budgets)}\n")
    paths = write_result("search_compare", figures, md)
    print(md)
    print("written:", *paths)


if __name__ == "__main__":
    main()
