"""adapt_service: POST /v1/adapters -> the new adapter's first served token, warm vs cold workers.

For each mode a `lorahub-serve serve` is started on the real model and hub:
- warm: `--adapt-workers 1`, a worker process that keeps the model and hub loaded (timed after it
  reported ready);
- cold: `--adapt-workers 0`, a fresh worker process per job (model + hub loaded per job: what
  the earlier `lorahub-serve adapt` subprocess per job cost).
Each job: POST (budget 40, K=20, 5 few-shot examples of a BBH task), poll the job every 50 ms
until it has succeeded, then stream one completion from the new adapter; the figure is the time
from POST to that first streamed token. The search time is the engine's own (`seconds` in the
adapter's lorahub.json). Done when: warm <= search + 2 s.

    .venv/bin/python bench/adapt_service.py [--jobs 2] [--task navigate] [--budget 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _examples(task: str, shots: int, seed: int) -> list[dict]:
    from lorahub_serve.data import tasks

    few = tasks.split(tasks.load_task(task), shots, 50, seed)[0]
    return [{"input": e.input, "output": e.output} for e in few]


def _one_job(url: str, client, name: str, examples: list[dict], budget: int, seed: int,
             store: Path) -> dict:
    import httpx

    t0 = time.perf_counter()
    r = httpx.post(f"{url}/v1/adapters", timeout=60, json={"name": name, "examples": examples,
                                                            "budget": budget, "seed": seed})
    r.raise_for_status()
    while (job := httpx.get(f"{url}/v1/adapters/{name}", timeout=30).json())["state"] in (
            "queued", "running"):
        time.sleep(0.05)
    t_done = time.perf_counter()
    if job["state"] != "succeeded":
        raise RuntimeError(f"job {name} {job['state']}: {job.get('error')}")
    stream = client.completions.create(model=name, prompt=examples[0]["input"], max_tokens=4,
                                       temperature=0, stream=True)
    for _ in stream:
        t_first = time.perf_counter()
        break
    for _ in stream:
        pass
    from lorahub_serve.formats import LORAHUB_FILE

    meta = json.loads((store / name / LORAHUB_FILE).read_text())
    return {"post_to_first_token_s": round(t_first - t0, 3), "post_to_done_s": round(t_done - t0, 3),
            "search_s": meta["seconds"], "evaluations": meta["evaluations"],
            "loss": meta["best_loss"], "overhead_s": round(t_first - t0 - meta["seconds"], 3)}


def run_mode(mode: str, args, examples: list[dict], work: Path) -> dict:
    import openai

    from lorahub_serve.serving.process import ServeProcess, free_port

    store = work / f"store-{mode}"
    store.mkdir()
    srv = ServeProcess(["--model", args.model, "--store", store, "--hub", args.hub,
                        "--port", free_port(), "--adapt-workers", 1 if mode == "warm" else 0,
                        "--", "--max-model-len", 2048], work / f"serve-{mode}.log", start_timeout_s=600)
    with srv:
        if mode == "warm":  # time jobs against a loaded worker, as a running service has one
            deadline = time.monotonic() + 600
            while "adaptation worker 0 ready" not in srv.log_path.read_text():
                if time.monotonic() > deadline:
                    raise TimeoutError(srv.log_tail())
                time.sleep(0.5)
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", timeout=600, max_retries=0)
        runs = []
        for i in range(args.jobs):
            run = _one_job(srv.url, client, f"{mode}{i}", examples, args.budget, i, store)
            print(f"[bench] {mode} job {i}: {run}", flush=True)
            runs.append(run)
    return {"runs": runs, "median_post_to_first_token_s":
            statistics.median(r["post_to_first_token_s"] for r in runs),
            "median_search_s": statistics.median(r["search_s"] for r in runs),
            "median_overhead_s": statistics.median(r["overhead_s"] for r in runs)}


def main() -> int:
    from _meta import write_result

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--hub", default=str(Path(__file__).resolve().parent.parent / "hubs/smollm2-135m"))
    p.add_argument("--task", default="bbh/navigate")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--budget", type=int, default=40)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--modes", default="warm,cold")
    args = p.parse_args()
    examples = _examples(args.task, args.shots, 0)
    figures = {"model": args.model, "hub": args.hub, "task": args.task, "shots": args.shots,
               "budget": args.budget}
    with tempfile.TemporaryDirectory(prefix="adapt-service-") as tmp:
        for mode in args.modes.split(","):
            figures[mode] = run_mode(mode, args, examples, Path(tmp))
    rows = [("| mode | job | POST -> first token (s) | POST -> succeeded (s) | search (s) | "
            "overhead (s) |"), "|---|---|---|---|---|---|"]
    for mode in args.modes.split(","):
        for i, r in enumerate(figures[mode]["runs"]):
            rows.append(f"| {mode} | {i} | {r['post_to_first_token_s']:.2f} | "
                        f"{r['post_to_done_s']:.2f} | {r['search_s']:.2f} | {r['overhead_s']:.2f} |")
    verdict = ""
    if "warm" in figures:
        w = figures["warm"]
        ok = all(r["overhead_s"] <= 2.0 for r in w["runs"])
        figures["warm_within_search_plus_2s"] = ok
        verdict = (f"Warm: every job's POST -> first token within search + 2 s: {'yes' if ok else 'NO'}"
                   f" (median overhead {w['median_overhead_s']:.2f} s).")
    md = "\n".join([(f"{args.model}, hub {Path(args.hub).name}, task {args.task}, {args.shots} "
                    f"examples, budget {args.budget}, K=20; polling every 50 ms."), "", *rows, "",
                    verdict, "", ("overhead = POST -> first token - search. Cold pays process "
                    "start, imports, model and hub load per job; warm pays the queue hand-off, "
                    "the export and vLLM's hot-load of the new adapter.")])
    jp, mp = write_result("adapt_service", figures, md)
    print(md, f"\n[bench] wrote {jp} and {mp}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
