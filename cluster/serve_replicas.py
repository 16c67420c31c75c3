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
  accounting; one GPU each when the cluster has a GPU per replica): starts the server through
  the `launch` it is given (`serving/replicas.py`: `lorahub-serve serve` on 127.0.0.1 with the
  same store, dying with the replica, its adaptation workers Ray actors of this cluster) and
  forwards HTTP to it. `check_health` fails when the server has exited, so Ray Serve replaces
  the replica.

This module knows nothing of the server: `serving/replicas.py` hands it `launch`, `route_key`
and `error` (the import arrow runs serving -> cluster). Every replica serves the same
store; `serving/store_locks.py` and `serving/job_records.py` make that safe (one composition
built once, one job run once, a dead replica's job taken over).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import ray
from ray import serve
from ray.exceptions import RayError

APP_NAME = "lorahub"
MAX_BODY_BYTES = 64 << 20  # the Ingress reads a body whole before routing it; the servers'
# own limits are lower (8 MiB for POST /v1/adapters)
ADAPTERS_PER_REPLICA = 8  # the multiplexing LRU of each replica (routing only; vLLM keeps its own)
_HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer",
                          "upgrade", "proxy-authorization", "proxy-authenticate", "host"})


# vLLM batches and queues itself: let many requests through to it (Ray Serve's default is 5).
@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64,
                  health_check_period_s=2, health_check_timeout_s=30,
                  graceful_shutdown_timeout_s=60)
class ServerReplica:
    """One `lorahub-serve serve` child process, and the HTTP forwarding to it."""

    async def __init__(self, launch: Callable, log_dir: str, share_cores: bool,
                       start_timeout_s: float = 600):
        import httpx

        context = serve.get_replica_context()
        cores = _my_cores(context.rank.local_rank, context.world_size) if share_cores else None
        # Launched from the replica's event-loop thread, which lives as long as the replica.
        self.server = launch(log_dir, ray.get_runtime_context().gcs_address, cores)
        deadline = asyncio.get_running_loop().time() + start_timeout_s
        while not self.server.ready():
            if asyncio.get_running_loop().time() > deadline:
                self.server.stop()
                raise TimeoutError(f"the replica's server was not ready in {start_timeout_s:.0f} s;"
                                   f" log {self.server.log_path}:\n{self.server.log_tail()}")
            await asyncio.sleep(0.25)
        self.client = httpx.AsyncClient(base_url=self.server.url,
                                        timeout=httpx.Timeout(None, connect=10))
        info = {"pid": os.getpid(), "server_pid": self.server.proc.pid, "url": self.server.url}
        self.server.log_path.with_suffix(".json").write_text(json.dumps(info))

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

    def __init__(self, replicas, route_key: Callable[[str, bytes], str],
                 error: Callable[[str, int], dict], retries: int = 5):
        self.replicas, self.route_key, self.error = replicas, route_key, error
        self.retries = retries

    async def __call__(self, request):
        from starlette.responses import JSONResponse, StreamingResponse

        too_large = JSONResponse(self.error(f"the body is larger than {MAX_BODY_BYTES} bytes, "
                                            "this endpoint's limit", 413),
                                 status_code=413, headers={"connection": "close"})
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return too_large
        chunks, size = [], 0
        async for chunk in request.stream():  # bounded: a huge body is never held whole
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return too_large
            chunks.append(chunk)
        body = b"".join(chunks)
        key = self.route_key(request.url.path, body)
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
        payload = self.error(f"no replica could answer ({self.retries} tries; last: "
                             f"{type(last).__name__}: {first[:300]}); retry the request", 503)
        return JSONResponse(payload, status_code=503, headers={"Retry-After": "1"})


def _my_cores(rank: int, replicas: int) -> list[int] | None:
    """This replica's share of this machine's cores when all `replicas` run on it (a local
    cluster): contiguous slices, so two vLLM CPU engines do not bind their threads to the same
    cores. None (vLLM's own binding) when there are fewer cores than replicas."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < replicas:
        return None
    share = len(cores) // replicas
    return cores[rank * share:(rank + 1) * share]


async def _rest(stream):
    async for chunk in stream:
        yield chunk


def serve_replicas(replicas: int, *, host: str, port: int, ray_address: str | None,
                   launch: Callable, route_key: Callable[[str, bytes], str],
                   error: Callable[[str, int], dict], announce: Callable[[Path | None], None],
                   log_dir: Path | None = None) -> int:
    """Run `replicas` replicas behind one endpoint on host:port until Ctrl-C or SIGTERM, on the
    Ray cluster at `ray_address` (None or "local": a local one started here).

    `launch(log_dir, ray_address, cores)` starts a replica's server (`.ready()`, `.url`, `.proc`,
    `.stop()`, `.log_path`, `.log_tail()`); `route_key(path, body)` names a request's adapter;
    `error(message, code)` is an error body (503, 413); `announce(log_dir)` before deploying, then
    `announce(None)` once every replica serves."""
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="lorahub-serve-replicas-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    address = None if ray_address in (None, "local") else ray_address
    # "local", not None: None would join any Ray cluster already running on this machine.
    ray.init(address=address or "local", include_dashboard=False, logging_level="WARNING")
    stop, ready = threading.Event(), threading.Event()

    def on_signal(*_) -> None:
        stop.set()
        if not ready.is_set():  # still deploying: interrupt serve.run, then clean up
            raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        serve.start(http_options={"host": host, "port": port})
        gpus = ray.cluster_resources().get("GPU", 0) >= replicas  # then one GPU each
        replica = ServerReplica.options(num_replicas=replicas, ray_actor_options={
            "num_cpus": 0, "num_gpus": 1 if gpus else 0})
        share_cores = address is None and not gpus  # every replica on this machine's CPU
        app = Ingress.bind(replica.bind(launch, str(log_dir), share_cores), route_key, error)
        announce(log_dir)
        serve.run(app, name=APP_NAME, route_prefix="/")
        ready.set()
        announce(None)
        while not stop.wait(0.5):
            pass
    finally:
        try:  # on a cluster of others, remove only this application
            serve.shutdown() if address is None else serve.delete(APP_NAME)
        finally:
            ray.shutdown()
    print("lorahub-serve: stopped", flush=True)
    return 0
