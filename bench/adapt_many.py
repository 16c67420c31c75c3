"""adapt_many: tasks/hour for many tasks, as users run them — one `lorahub-serve adapt` process per
task, one after another, against one `lorahub-serve adapt-batch` process for all of them.

Whole-process wall time on both sides (imports, model load, Ray and actor start-up for
adapt-batch, search, export). N tasks: the 8 upstream BIG-bench tasks of `bench/adapt_batch.py`,
each with several few-shot draws (seed = task index // 8), so every task has its own examples.
Checks that both sides wrote every adapter with the same weights.

    .venv/bin/python bench/adapt_many.py [--tasks 64] [--budget 40] [--model smollm2-135m] \
        [--hub hubs/smollm2-135m | --hub random] [--actors 1] [--threads 2]

`--hub random` builds 20 random rank-8 q,v modules for the model (e.g. a random-weight model on a
GPU machine, whose fingerprint no committed hub matches).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import write_result
from adapt_batch import TASKS

MODEL = "smollm2-135m"


def task_list(n: int) -> list[tuple[str, list]]:
    from lorahub_serve.data import tasks

    data = {t: tasks.load_task(t) for t in TASKS[:min(n, len(TASKS))]}
    out = []
    for i in range(n):
        task = TASKS[i % len(TASKS)]
        shots, _ = tasks.split(data[task], 5, 50, seed=i // len(TASKS))
        out.append((f"{task.replace('/', '-')}-s{i // len(TASKS)}", shots))
    return out


def weights_of(store: Path, names: list[str]) -> dict[str, np.ndarray]:
    from lorahub_serve.formats import read_lorahub_json

    out = {}
    for name in names:
        meta = read_lorahub_json(store / name)
        if meta is not None:
            out[name] = np.array(meta["weights"])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=64)
    p.add_argument("--budget", type=int, default=40)
    p.add_argument("--model", default=MODEL, help="registry name or Hugging Face folder")
    p.add_argument("--hub", default="hubs/smollm2-135m", help="hub folder, or 'random'")
    p.add_argument("--actors", type=int, default=1, help="adapt-batch actors (0: in its own process, no Ray)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    tasks = task_list(a.tasks)
    names = [n for n, _ in tasks]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    cli = [sys.executable, "-m", "lorahub_serve.cli"]
    work = Path(tempfile.mkdtemp(prefix="adapt-many-"))
    if a.hub == "random":
        from lorahub_serve.models import load_base, resolve_model
        from lorahub_serve.testing import random_hub

        base, _ = load_base(resolve_model(a.model))
        a.hub = str(work / "hub")
        random_hub(base, Path(a.hub), n=20, ranks=(8,), base_name=a.model, scale=0.25)
        del base
        hub_desc = "20 random rank-8 q,v modules"
    else:
        hub_desc = f"K=20 of {a.hub}"
    common = ["--model", a.model, "--hub", a.hub, "--budget", str(a.budget), "--seed", "0"]
    try:
        lines = []
        for name, shots in tasks:
            f = work / f"{name}.jsonl"
            f.write_text("".join(json.dumps({"input": e.input, "output": e.output}) + "\n" for e in shots))
            lines.append(json.dumps({"name": name, "examples_path": str(f)}))
        (work / "tasks.jsonl").write_text("\n".join(lines) + "\n")
        print(f"[bench] {len(tasks)} tasks x budget {a.budget}: one adapt process each", flush=True)
        t0 = time.perf_counter()
        for i, (name, _) in enumerate(tasks):
            subprocess.run([*cli, "adapt", *common, "--examples", str(work / f"{name}.jsonl"),
                            "--out", str(work / "seq" / name)], check=True, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if (i + 1) % 8 == 0:
                print(f"[bench]   {i + 1} done, {time.perf_counter() - t0:.0f} s", flush=True)
        seq_s = time.perf_counter() - t0
        print(f"[bench] sequential: {seq_s:.1f} s; now one adapt-batch process", flush=True)
        t0 = time.perf_counter()
        subprocess.run([*cli, "adapt-batch", str(work / "tasks.jsonl"), *common, "--out", str(work / "batch"),
                        "--actors", str(a.actors), "--no-progress",
                        *(["--cpus-per-actor", str(a.threads)] if a.actors else [])],
                       check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        batch_s = time.perf_counter() - t0
        seq_w, batch_w = weights_of(work / "seq", names), weights_of(work / "batch", names)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    same = sum(n in seq_w and n in batch_w and np.allclose(seq_w[n], batch_w[n], atol=1e-6) for n in names)
    n = len(tasks)
    figures = {
        "tasks": n, "budget": a.budget, "hub": hub_desc, "model": a.model, "actors": a.actors, "threads": a.threads,
        "sequential_adapt_s": round(seq_s, 1), "adapt_batch_s": round(batch_s, 1),
        "sequential_tasks_per_hour": round(3600 * n / seq_s, 1), "adapt_batch_tasks_per_hour": round(3600 * n / batch_s, 1),
        "ratio": round(seq_s / batch_s, 2), "written_sequential": len(seq_w), "written_batch": len(batch_w),
        "same_weights": same,
    }
    mode = f"{a.actors} Ray actor(s), {a.threads} CPUs each" if a.actors else "in its own process"
    md = (f"| | wall s | tasks/hour |\n|---|---|---|\n"
          f"| one `adapt` process per task, one after another | {seq_s:.1f} | {figures['sequential_tasks_per_hour']} |\n"
          f"| one `adapt-batch` process ({mode}) | {batch_s:.1f} | {figures['adapt_batch_tasks_per_hour']} |\n\n"
          f"- adapt-batch / sequential: **{figures['ratio']}x** tasks/hour\n"
          f"- {n} tasks (8 upstream BIG-bench tasks x {-(-n // 8)} few-shot draws), budget {a.budget}, "
          f"{hub_desc}, 5 shots, seed 0, {a.model}, {a.threads} threads; whole processes.\n"
          f"- adapters written: {len(seq_w)} / {len(batch_w)} of {n}; the same weights (atol 1e-6): {same}/{n}.\n")
    json_path, md_path = write_result("adapt_many", figures, md)
    print(md)
    print(f"[bench] wrote {json_path} and {md_path}")
    return 0 if same == n else 1


if __name__ == "__main__":
    sys.exit(main())
