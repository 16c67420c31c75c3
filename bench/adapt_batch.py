"""Benchmark: `adapt-batch` (tasks packed into shared batches, Ray actors) versus the baseline,
one task after another with `Engine.adapt`, on the same tasks, hub, seed and budget, in one run.

8 upstream (non-BBH) BIG-bench tasks, 5 few-shot examples each, SmolLM2-135M, a hub of 20
random rank-8 q,v modules (speed does not depend on the values), K = 20.

    .venv/bin/python bench/adapt_batch.py                 # budget 12, actors 1 and 2
    .venv/bin/python bench/adapt_batch.py --budget 40 --actors 1 2 --inline --cpus-per-actor 1

Figures: tasks/hour and evaluations/s of each configuration, measured on the search only
(model loading and, for Ray, cluster and actor start-up are reported separately), the
(b)/(a) ratio and the 1 -> 2 actor scaling; plus whether each task's result equals the
baseline's. Results go to bench/results/adapt_batch-<stamp>.{json,md}.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import write_result

from lorahub_serve.eval.suite import RG_SUITE_CANDIDATES

# Short reasoning-gym tasks that no hub module is trained on (the headroom suite's candidates).
TASKS = list(RG_SUITE_CANDIDATES[:8])
MODEL = "smollm2-135m"


def bench_hub(model_folder: Path) -> Path:
    """20 random rank-8 q,v modules, built once into the cache."""
    from lorahub_serve import paths, testing
    from lorahub_serve.formats import HUB_FILE
    from lorahub_serve.models import load_base

    hub = paths.home() / "bench" / "random-hub-smollm2-135m-n20-r8"
    if not (hub / HUB_FILE).exists():
        shutil.rmtree(hub, ignore_errors=True)
        base, _ = load_base(model_folder)
        testing.random_hub(base, hub, n=20, ranks=(8,), base_name=MODEL)
    return hub


def task_examples(n: int) -> list[tuple[str, list]]:
    from lorahub_serve.data import tasks

    out = []
    for task in TASKS[:n]:
        shots, _ = tasks.split(tasks.load_task(task), 5, 50, seed=0)
        out.append((task.replace("/", "-"), shots))
    return out


def run_sequential(engine, tasks, config, threads: int) -> dict:
    """(a) the baseline: one loaded Engine, `adapt` task after task, on `threads` torch threads."""
    import torch

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    results = {name: engine.adapt(ex, task=name, config=config, progress=False) for name, ex in tasks}
    return {"search_s": time.perf_counter() - t0, "results": results}


def run_batch(hub: Path, tasks, config, actors: int, cpus_per_actor: int | None, engine=None) -> dict:
    """(b) adapt-batch: all tasks' populations packed; `actors` Ray actors (0: in-process)."""
    from lorahub_serve.cluster import run_adapt_batch

    marks: dict[str, float] = {}

    def on_event(event, data):
        marks.setdefault(event, time.perf_counter())  # "actors": every actor has loaded the model
        marks["last"] = time.perf_counter()

    store = Path(tempfile.mkdtemp(prefix="adapt-batch-bench-"))
    t0 = time.perf_counter()
    try:
        report = run_adapt_batch(MODEL, hub, tasks, store, actors=actors, config=config,
                                 progress=False, callback=on_event, cpus_per_actor=cpus_per_actor,
                                 engine=engine if actors == 0 else None)
    finally:
        shutil.rmtree(store, ignore_errors=True)
    wall = time.perf_counter() - t0
    started = marks.get("actors", t0) if actors else t0
    return {"wall_s": wall, "startup_s": started - t0, "search_s": marks["last"] - started,
            "results": report["results"], "failed": report["failed"]}


def figures_of(search_s: float, n_tasks: int, evals: int) -> dict:
    return {"search_s": round(search_s, 1), "evaluations": evals,
            "evals_per_s": round(evals / search_s, 3), "tasks_per_hour": round(3600 * n_tasks / search_s, 1)}


def compare(results, baseline) -> dict:
    same = [np.array_equal(results[n].weights, baseline[n].weights) for n in baseline]
    dloss = max(abs(results[n].best_loss - baseline[n].best_loss) for n in baseline)
    return {"same_weights": f"{sum(same)}/{len(same)}", "max_abs_dloss": float(f"{dloss:.2e}")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=int, default=12, help="evaluations per task (12 = one generation)")
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    p.add_argument("--inline", action="store_true", help="also adapt-batch in this process (no Ray)")
    p.add_argument("--cpus-per-actor", type=int, default=1,
                   help="CPUs (torch threads) per actor (default 1: the per-actor figure)")
    a = p.parse_args()

    from lorahub_serve.engine.search import SearchConfig
    from lorahub_serve.models import resolve_model

    hub = bench_hub(resolve_model(MODEL))
    tasks = task_examples(a.tasks)
    config = SearchConfig(budget=a.budget, seed=0)
    n, evals = len(tasks), len(tasks) * a.budget
    print(f"[bench] {n} tasks x budget {a.budget}, K=20, hub {hub}", flush=True)

    from lorahub_serve.engine.adapt import Engine

    t0 = time.perf_counter()
    engine = Engine(MODEL, hub)
    load_s = time.perf_counter() - t0
    # The baseline gets its best thread count on this machine: probe one generation of one task
    # at 1 and 2 threads (the engine is warm after the first probe; both probes run warm).
    probe_cfg = SearchConfig(budget=12, seed=0)
    run_sequential(engine, tasks[:1], SearchConfig(budget=1, seed=0), 1)  # warm-up
    probe = {t: round(run_sequential(engine, tasks[:1], probe_cfg, t)["search_s"], 1) for t in (1, 2)}
    threads = min(probe, key=probe.get)
    print(f"[bench] baseline probe, 12 evals: {probe} s by threads -> (a) uses {threads}", flush=True)
    seq = run_sequential(engine, tasks, config, threads)
    rows = {"a_sequential_adapt": {**figures_of(seq["search_s"], n, evals), "load_s": round(load_s, 1),
                                   "threads": threads, "probe_s_by_threads": probe}}
    print(f"[bench] (a) {rows['a_sequential_adapt']}", flush=True)
    configs = ([0] if a.inline else []) + list(a.actors)
    for actors in configs:
        out = run_batch(hub, tasks, config, actors, a.cpus_per_actor, engine)
        key = f"b_adapt_batch_{actors}_actors" if actors else "b_adapt_batch_inline"
        rows[key] = {**figures_of(out["search_s"], n, evals), "startup_s": round(out["startup_s"], 1),
                     "cpus_per_actor": a.cpus_per_actor if actors else "this process",
                     "wall_s": round(out["wall_s"], 1), "failed": out["failed"],
                     **compare(out["results"], seq["results"])}
        print(f"[bench] ({key}) {rows[key]}", flush=True)

    engine.close()
    base = rows["a_sequential_adapt"]["tasks_per_hour"]
    batch_keys = [k for k in rows if k.startswith("b_")]
    best = max(batch_keys, key=lambda k: rows[k]["tasks_per_hour"])
    figures = {"tasks": [t for t, _ in tasks], "budget": a.budget, "k": 20, "shots": 5, "model": MODEL,
               "configs": rows, "best_batch_config": best,
               "ratio_best_batch_over_sequential": round(rows[best]["tasks_per_hour"] / base, 3)}
    if "b_adapt_batch_1_actors" in rows and "b_adapt_batch_2_actors" in rows:
        figures["scaling_2_over_1_actors"] = round(
            rows["b_adapt_batch_2_actors"]["tasks_per_hour"] / rows["b_adapt_batch_1_actors"]["tasks_per_hour"], 3)
    md = ["| configuration | search s | evals/s | tasks/hour | start-up s | same weights as (a) | max abs dloss |",
          "|---|---|---|---|---|---|---|"]
    for k, r in rows.items():
        md.append(f"| {k} | {r['search_s']} | {r['evals_per_s']} | {r['tasks_per_hour']} | "
                  f"{r.get('startup_s', r.get('load_s'))} | {r.get('same_weights', '-')} | {r.get('max_abs_dloss', '-')} |")
    md.append("")
    md.append(f"- best adapt-batch / sequential adapt: **{figures['ratio_best_batch_over_sequential']}x** ({best})")
    if "scaling_2_over_1_actors" in figures:
        md.append(f"- 2 actors / 1 actor: **{figures['scaling_2_over_1_actors']}x**")
    md.append(f"- {n} tasks x budget {a.budget} (popsize 12, so {-(-a.budget // 12)} generation(s) per task), "
              "K=20 random rank-8 q,v modules, 5 shots, seed 0. Search time only; start-up listed apart.")
    md.append(f"- (a): one Engine, `adapt` task after task, {threads} torch thread(s) (the faster in "
              f"a probe: {probe} s for 12 evaluations by threads); (b): `run_adapt_batch`, "
              f"{a.cpus_per_actor} CPU (torch thread) per actor, local Ray.")
    md.append("- (a) and (b) ran in the same process run, one after the other, on a shared machine: "
              "see loadavg_1m above; other jobs' load makes absolute figures noisy.")
    json_path, md_path = write_result("adapt_batch", figures, "\n".join(md))
    print("\n".join(md))
    print(f"[bench] wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
