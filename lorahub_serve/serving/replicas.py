"""`lorahub-serve serve --replicas N`: what the Ray Serve application needs from the server.

The application itself (deployments, routing, retries, start and stop) is Ray code and lives in
`cluster/serve_replicas.py`; it knows nothing of this package's server and is handed these
functions instead (the import arrow runs serving -> cluster, as for the Ray adaptation workers):

- `launch_server`: one replica's `lorahub-serve serve` child on 127.0.0.1 (same store and
  options), which dies with the replica (`ServeProcess(die_with_parent=True)`);
- `route_key`: the adapter a request names, Ray Serve's multiplexed model id;
- `error`: an error body in OpenAI's format (503 when no replica could answer, 413).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import fields
from pathlib import Path

from lorahub_serve.engine.config import EngineConfig
from lorahub_serve.serving.compositions import ROUTES
from lorahub_serve.serving.errors import error_body, error_type
from lorahub_serve.serving.process import READY_MARK, ServeProcess, free_port


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
    return opts + engine_options(cfg.engine) + (["--", *cfg.vllm_args] if cfg.vllm_args else [])


def engine_options(engine: EngineConfig) -> list[str]:
    """The `add_engine_arguments` options that give `engine` (flags named after its fields, so
    they are declared once, in engine/config.py)."""
    opts = []
    for f in fields(engine):
        value, flag = getattr(engine, f.name), "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            opts += [flag] if value else []
        elif value is not None:
            opts += [flag, str(value)]
    return opts


def launch_server(cfg, log_dir: str, ray_address: str | None,
                  cores: list[int] | None = None) -> ServeProcess:
    """Start a replica's server (returns at once: poll `ready()`); its adaptation workers are Ray
    actors of `ray_address`; on CPU its vLLM threads bind to `cores` (None: vLLM's choice). Call
    from a thread that lives as long as the replica."""
    bind = cores and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ  # the user's setting wins
    env = {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores))} if bind else None
    server = ServeProcess(child_options(cfg, free_port(), ray_address),
                          Path(log_dir) / f"{replica_id()}.log", env=env, die_with_parent=True)
    server.launch()
    return server


def replica_id() -> str:
    """This replica's file name stem in the log folder (host and pid: the store may be shared)."""
    return f"replica-{os.uname().nodename}-{os.getpid()}"


def route_key(base_name: str, path: str, body: bytes) -> str:
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


def error(message: str, code: int) -> dict:
    """An error body in OpenAI's format (the endpoint's own 503 and 413)."""
    return error_body(message, error_type(code), code)


def run_replicas(cfg, replicas: int) -> int:
    """Serve `cfg` with `replicas` replicas behind one endpoint until Ctrl-C or SIGTERM."""
    from lorahub_serve.cluster.serve_replicas import serve_replicas
    from lorahub_serve.models import resolve_model

    if replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {replicas}")
    resolve_model(cfg.model)  # a missing model is one error line here, not N replica failures
    Path(cfg.store).mkdir(parents=True, exist_ok=True)
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host

    def announce(log_dir: Path | None) -> None:
        if log_dir is not None:
            print(f"lorahub-serve: starting {replicas} replica(s) of {cfg.model} on Ray Serve "
                  f"(store {Path(cfg.store).resolve()}; replica logs {log_dir})", flush=True)
        else:
            print(f"{READY_MARK}http://{host}:{cfg.port}/v1 (model {cfg.model!r}, {replicas} "
                  f"replica(s) on Ray Serve{', API key required' if cfg.api_key else ''}); "
                  "Ctrl-C to stop", flush=True)

    from lorahub_serve.serving.jobs import JOBS_DIR

    return serve_replicas(
        replicas, host=cfg.host, port=cfg.port, ray_address=cfg.ray_address,
        log_dir=Path(cfg.store).resolve() / JOBS_DIR / "replicas",
        launch=functools.partial(launch_server, cfg),
        route_key=functools.partial(route_key, cfg.model), error=error,
        announce=announce)
