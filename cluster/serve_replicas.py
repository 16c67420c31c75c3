"""`lorahub-serve serve --replicas N`: N replicas of the project's server behind one endpoint,
as a Ray Serve application (docs/cluster.md, "Serving on a cluster").

Why not Ray Serve LLM (`ray.serve.llm`): it runs its own vLLM engine, and `ray[serve,llm]` pulls
the CUDA build of vLLM, which replaces vLLM's CPU build; it also cannot carry this project's
routes (`/v1/adapters`, compositions named in the request, the store resolver). So each replica
runs the project's own `lorahub-serve serve` (vLLM's OpenAI server with the store attached) as a
child process on a private port, and Ray Serve does what it is good at: the HTTP endpoint,
replicas, health checks, replacement, and routing by model multiplexing.

- `Ingress` (one replica, no CPU reserved): receives every HTTP request on Ray Serve's proxy,
  reads the adapter it names (`model`, or a composition's content key for `"lorahub": {...}`)
  and calls `ServerReplica.forward` with that as the multiplexed model id, so Ray Serve prefers
  a replica that has already loaded it; the response streams back. A replica that dies before
  it answered is retried on another (the request had no effect there); after `retries` it is a
  503 in OpenAI's error format with `Retry-After`, which clients retry.
- `ServerReplica` (N replicas; no CPU reserved, since vLLM runs in the child outside Ray's
  accounting; one GPU each when the cluster has a GPU per replica): starts `lorahub-serve serve`
  on 127.0.0.1 with the same store and options; the child dies with the replica (PR_SET_PDEATHSIG), and its own reaper stops
  vLLM's processes. Its adaptation workers are Ray actors of the same cluster. `check_health`
  fails when the child has exited, so Ray Serve replaces the replica.

Every replica serves the same store; `serving/store_locks.py` and `serving/job_records.py` make
that safe (one composition built once, one job run once, a dead replica's job taken over).
This module and `cluster/` are the only places that import Ray.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import tempfile
import threading
from pathlib import Path

import ray
from ray import serve
from ray.exceptions import RayError

from lorahub_serve.serving.compositions import ROUTES
from lorahub_serve.serving.errors import error_body
from lorahub_serve.serving.process import READY_MARK, ServeProcess, free_port

APP_NAME = "lorahub"
ADAPTERS_PER_REPLICA = 8  # the multiplexing LRU of each replica (routing only; vLLM keeps its own)
_HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer",
                          "upgrade", "proxy-authorization", "proxy-authenticate", "host"})


def route_key(path: str, body: bytes, base_name: str) -> str:
    """The multiplexed model id of a request: the adapter it names, `lorahub:<hash>` for a
    composition named in the request, or "" (any replica) for the base model and other routes."""
    if path not in ROUTES or not body:
        return ""
    try:
        request = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(request, dict):
        return ""
    if "lorahub" in request:
        spec = json.dumps(request["lorahub"], sort_keys=True, default=str).encode()
        return "lorahub:" + hashlib.sha256(spec).hexdigest()[:24]
    model = request.get("model")
    return model if isinstance(model, str) and model != base_name else ""


def child_options(cfg, port: int, ray_address: str | None) -> list[str]:
    """`lorahub-serve serve` options of one replica's server: `cfg`'s, on 127.0.0.1:`port`."""
    opts = ["--model", cfg.model, "--store", str(Path(cfg.store).resolve()), "--host", "127.0.0.1",
            "--port", str(port), "--max-loras", str(cfg.max_loras),
            "--max-lora-rank", str(cfg.max_lora_rank), "--adapt-timeout", str(cfg.adapt_timeout_s),
            "--adapt-workers", str(cfg.adapt_workers), "--adapt-queue", str(cfg.adapt_queue)]
    if cfg.hub is not None:
        opts += ["--hub", str(Path(cfg.hub).resolve())]
    if cfg.api_key:
        opts += ["--api-key", cfg.api_key]
    if ray_address:
        opts += ["--ray-address", ray_address]
    e = cfg.engine
    opts += ["--rule", e.rule, "--backend", e.backend, "--dtype", e.dtype]
    opts += ["--token-budget", str(e.token_budget)] if e.token_budget is not None else []
    opts += ["--truncate"] if e.truncate else []
    opts += ["--allow-pickle"] if e.allow_pickle else []
    return opts + (["--", *cfg.vllm_args] if cfg.vllm_args else [])


# vLLM batches and queues itself: let many requests through to it (Ray Serve's default is 5).
@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64,
                  health_check_period_s=2, health_check_timeout_s=30,
                  graceful_shutdown_timeout_s=60)
class ServerReplica:
    """One `lorahub-serve serve` child process, and the HTTP forwarding to it."""

    async def __init__(self, cfg, log_dir: str, start_timeout_s: float = 600):
        import httpx

        port = free_port()
        log = Path(log_dir) / f"replica-{os.getpid()}.log"
        # Launched from the replica's event-loop thread, which lives as long as the replica.
        self.server = ServeProcess(child_options(cfg, port, ray.get_runtime_context().gcs_address),
                                   log, die_with_parent=True)
        self.server.launch()
        deadline = asyncio.get_running_loop().time() + start_timeout_s
        while not self.server.ready():
            if asyncio.get_running_loop().time() > deadline:
                self.server.stop()
                raise TimeoutError(f"the replica's server was not ready in {start_timeout_s:.0f} s;"
                                   f" log {log}:\n{self.server.log_tail()}")
            await asyncio.sleep(0.25)
        self.client = httpx.AsyncClient(base_url=self.server.url,
                                        timeout=httpx.Timeout(None, connect=10))
        info = {"pid": os.getpid(), "server_pid": self.server.proc.pid, "url": self.server.url}
        (Path(log_dir) / f"replica-{os.getpid()}.json").write_text(json.dumps(info))

    @serve.multiplexed(max_num_models_per_replica=ADAPTERS_PER_REPLICA)
    async def adapter(self, model_id: str) -> str:
        """Mark `model_id` as loaded here (for routing); vLLM loads it from the store on first
        use and keeps its own LRU of `--max-loras` slots."""
        return model_id

    async def forward(self, method: str, path: str, query: str, headers: list, body: bytes):
        """Stream the child's response: first `{"status", "headers"}`, then the body's chunks."""
        if model_id := serve.get_multiplexed_model_id():
            await self.adapter(model_id)
        url = path + (f"?{query}" if query else "")
        request = self.client.build_request(method, url, headers=headers, content=body)
        response = await self.client.send(request, stream=True)
        try:
            yield {"status": response.status_code,
                   "headers": [(k, v) for k, v in response.headers.items()
                               if k.lower() not in _HOP_HEADERS]}
            async for chunk in response.aiter_raw():
                yield chunk
        finally:
            await response.aclose()

    def check_health(self) -> None:
        if self.server.proc.poll() is not None:
            raise RuntimeError(f"the replica's server exited with status {self.server.proc.returncode};"
                               f" log {self.server.log_path}")

    def __del__(self):
        server = getattr(self, "server", None)
        if server is not None:
            server.stop()


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024)
class Ingress:
    """The one endpoint: route each request to a replica by the adapter it names."""

    def __init__(self, replicas, base_name: str, retries: int = 5):
        self.replicas, self.base_name, self.retries = replicas, base_name, retries

    async def __call__(self, request):
        from starlette.responses import JSONResponse, StreamingResponse

        body = await request.body()
        key = route_key(request.url.path, body, self.base_name)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS]
        last = None
        for attempt in range(self.retries):
            stream = self.replicas.options(stream=True, multiplexed_model_id=key).forward.remote(
                request.method, request.url.path, request.url.query, headers, body)
            try:
                head = await stream.__anext__()
            except (RayError, StopAsyncIteration) as e:  # the replica died or lost its server
                last = e
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            return StreamingResponse(_rest(stream), status_code=head["status"],
                                     headers=dict(head["headers"]))
        first = (str(last).strip().splitlines() or [type(last).__name__])[0]
        payload = error_body(f"no replica could answer ({self.retries} tries; last: "
                             f"{type(last).__name__}: {first[:300]}); retry the request",
                             "ServiceUnavailableError", 503)
        return JSONResponse(payload, status_code=503, headers={"Retry-After": "1"})


async def _rest(stream):
    async for chunk in stream:
        yield chunk


def serve_replicas(cfg, replicas: int, log_dir: Path | None = None) -> int:
    """Run `replicas` replicas of `serve` behind one endpoint on cfg.host:cfg.port until
    Ctrl-C or SIGTERM; on an existing Ray cluster with cfg.ray_address (default: a local one)."""
    from lorahub_serve.models import resolve_model

    if replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {replicas}")
    resolve_model(cfg.model)  # a missing model is one error line here, not N replica failures
    Path(cfg.store).mkdir(parents=True, exist_ok=True)
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="lorahub-serve-replicas-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    address = None if cfg.ray_address in (None, "local") else cfg.ray_address
    ray.init(address=address, include_dashboard=False, logging_level="WARNING")
    stop, ready = threading.Event(), threading.Event()

    def on_signal(*_) -> None:
        stop.set()
        if not ready.is_set():  # still deploying: interrupt serve.run, then clean up
            raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        serve.start(http_options={"host": cfg.host, "port": cfg.port})
        gpus = ray.cluster_resources().get("GPU", 0) >= replicas  # then one GPU each
        replica = ServerReplica.options(num_replicas=replicas, ray_actor_options={
            "num_cpus": 0, "num_gpus": 1 if gpus else 0})
        app = Ingress.bind(replica.bind(cfg, str(log_dir)), cfg.model)
        print(f"lorahub-serve: starting {replicas} replica(s) of {cfg.model} on Ray Serve "
              f"(store {Path(cfg.store).resolve()}; replica logs {log_dir})", flush=True)
        serve.run(app, name=APP_NAME, route_prefix="/")
        ready.set()
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        print(f"{READY_MARK}http://{host}:{cfg.port}/v1 (model {cfg.model!r}, {replicas} "
              f"replica(s) on Ray Serve{', API key required' if cfg.api_key else ''}); "
              "Ctrl-C to stop", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        try:  # on a cluster of others, remove only this application
            serve.shutdown() if address is None else serve.delete(APP_NAME)
        finally:
            ray.shutdown()
    print("lorahub-serve: stopped", flush=True)
    return 0
