"""serve_replicas: one replica against two behind one endpoint (`serve --replicas N`, Ray Serve).

8 concurrent clients (default) send greedy completions of a fixed length (`ignore_eos`) through
the endpoint, cycling over two stored adapters and two compositions named in the request
(`"lorahub": {...}`, built on first use, then cache hits). Each configuration gets a fresh store
and a fresh local Ray cluster; one warm-up request per kind first (loads the adapters, builds
the compositions), then the measured round. Figures: p50/p99 latency, completion tokens/s over
the round's wall time, errors.

Model: SmolLM2-135M (`lorahub-serve model fetch smollm2-135m`) with the committed hub; on a GPU
machine each replica reserves one GPU (serve --replicas does that when the cluster has GPUs).

    .venv/bin/python bench/serve_replicas.py [--replicas 1,2] [--clients 8] [--requests 6] \
        [--max-tokens 32] [--model smollm2-135m] [--hub hubs/smollm2-135m]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parent.parent
PROMPTS = [
    "Q: Is the following sentence plausible? \"The striker scored a goal from the corner.\"\nA:",
    "Q: Sort the words alphabetically: pear apple mango banana\nA:",
    "Q: If you follow these instructions, do you return to the starting point? Take 3 steps.\nA:",
    "Q: Which is the capital of France?\nOptions:\n(A) Paris\n(B) Rome\nA:",
]


def kinds(hub: Path) -> list[tuple[str, dict | None]]:
    """(model, lorahub spec or None): two stored adapters and two compositions of hub modules."""
    modules = [m["name"] for m in json.loads((hub / "hub.json").read_text())["modules"]][:6]
    return [("stored0", None), ("stored1", None),
            (None, {"modules": {modules[2]: 0.6, modules[3]: 0.4}}),
            (None, {"modules": {modules[4]: 0.5, modules[5]: -0.3, modules[2]: 0.2}})]


def make_store(hub: Path, work: Path) -> Path:
    store = work / "store"
    store.mkdir(parents=True)
    modules = [m["name"] for m in json.loads((hub / "hub.json").read_text())["modules"]]
    for i in range(2):  # hub modules are PEFT folders: served as stored adapters as they are
        shutil.copytree(hub / "modules" / modules[i], store / f"stored{i}")
    return store


def run_config(args, replicas: int) -> dict:
    import httpx

    from lorahub_serve.serving.process import ServeProcess, free_port

    work = Path(tempfile.mkdtemp(prefix=f"bench-replicas{replicas}-"))
    store = make_store(args.hub, work)
    vllm = ["--max-model-len", "512"]
    if _has_cuda():
        vllm += ["--gpu-memory-utilization", "0.4"]
    srv = ServeProcess(["--model", args.model, "--store", store, "--hub", args.hub, "--port",
                        free_port(), "--replicas", replicas, "--adapt-workers", 0, "--", *vllm],
                       work / "serve.log", start_timeout_s=900)
    t0 = time.perf_counter()
    plan = kinds(args.hub)

    def ask(i: int) -> tuple[float, int, str | None]:
        model, spec = plan[i % len(plan)]
        body = {"model": model or args.model, "prompt": PROMPTS[i % len(PROMPTS)],
                "max_tokens": args.max_tokens, "temperature": 0, "ignore_eos": True}
        if spec is not None:
            body["lorahub"] = spec
        t = time.perf_counter()
        try:
            r = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=600)
        except httpx.HTTPError as e:
            return time.perf_counter() - t, 0, type(e).__name__
        if r.status_code != 200:
            return time.perf_counter() - t, 0, f"HTTP {r.status_code}: {r.text[:120]}"
        return time.perf_counter() - t, r.json()["usage"]["completion_tokens"], None

    try:
        srv.start()
        start_s = time.perf_counter() - t0
        warm = [ask(i) for i in range(len(plan))]
        errors = [e for *_, e in warm if e]
        assert not errors, f"warm-up failed: {errors}"
        n = args.clients * args.requests
        t = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            answers = list(pool.map(ask, range(n)))
        wall = time.perf_counter() - t
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)
    lat = sorted(a[0] for a in answers if a[2] is None)
    tokens = sum(a[1] for a in answers)
    return {"replicas": replicas, "clients": args.clients, "requests": n,
            "max_tokens": args.max_tokens, "start_s": round(start_s, 1), "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 2), "p50_s": round(_pct(lat, 0.5), 3),
            "p99_s": round(_pct(lat, 0.99), 3), "errors": [a[2] for a in answers if a[2]]}


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", default="1,2", help="configurations, comma-separated")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=6, help="per client")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--hub", type=Path, default=REPO / "hubs" / "smollm2-135m")
    args = p.parse_args()
    from _meta import write_result

    load_before = os.getloadavg()
    rows = [run_config(args, int(r)) for r in args.replicas.split(",")]
    load_after = os.getloadavg()
    base = rows[0]["tokens_per_s"]
    lines = ["| replicas | start (s) | requests | p50 (s) | p99 (s) | tokens/s | vs first | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['replicas']} | {r['start_s']} | {r['requests']} | {r['p50_s']} | "
                     f"{r['p99_s']} | {r['tokens_per_s']} | {r['tokens_per_s'] / base:.2f}x | "
                     f"{len(r['errors'])} |")
    command = "python bench/serve_replicas.py " + " ".join(sys.argv[1:])
    md = (f"Command: `{command}`\n\nLoad average before {load_before}, after {load_after} "
          f"(1, 5, 15 min); {os.cpu_count()} CPUs.\n\n{args.clients} concurrent clients, greedy "
          f"completions of {args.max_tokens} tokens cycling over 2 stored adapters and 2 "
          "compositions named in the request, through the one endpoint.\n\n" + "\n".join(lines))
    figures = {"command": command, "load_before": load_before, "load_after": load_after,
               "rows": rows}
    _, md_path = write_result("serve_replicas", figures, md)
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
