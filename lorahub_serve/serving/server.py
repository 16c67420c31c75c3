"""`lorahub-serve serve`: vLLM's own OpenAI server and engine, with the adapter store attached.

How it is put together (and why). vLLM offers three supported ways to extend its server:
`--middleware` (ASGI middleware by import path), endpoint plugins and general plugins (package
entry points, opt-in through `VLLM_PLUGINS`), and its launcher functions, which `vllm serve`
itself composes (`setup_server`, `build_async_engine_client`, `build_app`, `init_app_state`,
`serve_http`). We compose those same functions here, in this process, and add our pieces between
`build_app` and serving:

- the `StoreResolver` registered in vLLM's `LoRAResolverRegistry` (hot-loading by name);
- our APIRouter (`routes.py`) in front of vLLM's routes (`/v1/adapters`, a `/v1/models` that
  lists the store);
- `ApiKeyMiddleware` outermost, so the key guards every route;
- `CompositionMiddleware` (with `--hub`) next: a completions body that names a composition
  (`"lorahub": {...}`) is turned into a request for the composed adapter (`compositions.py`);
- the adaptation jobs (`jobs.py`): records recovered from the store before serving, warm worker
  processes started beside vLLM's engine, and `reaper.py`, which stops vLLM's processes if this
  one is killed.

Middleware alone could not register the resolver or reach app state cleanly, and entry-point
plugins would need the package re-installed and an allow-list in the environment; composing the
launcher keeps it one process, vLLM's server and engine unchanged, and no proxy in the path.
What we must re-state is `build_and_serve`'s call of `serve_http` (its uvicorn settings).

Safety. vLLM consults resolvers only when `VLLM_ALLOW_RUNTIME_LORA_UPDATING` is set, which also
turns on its load/unload routes (`/v1/load_lora_adapter`, SageMaker's `/adapters`) that load any
path on disk; we remove those routes, and vLLM's own filesystem/HF resolvers are switched off, so
adapters come only from the store, by validated name. One API server process only
(`--api-server-count` > 1 is not supported here).
"""

from __future__ import annotations

import asyncio
import os
import sys
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path

from lorahub_serve.engine.config import EngineConfig
from lorahub_serve.formats import LORA_RANKS  # vLLM's accepted --max-lora-rank values
from lorahub_serve.serving.auth import ApiKeyMiddleware
from lorahub_serve.serving.jobs import AdaptJobs
from lorahub_serve.serving.reaper import start_reaper, stop_reaper
from lorahub_serve.serving.startup_signals import StartupSignals
from lorahub_serve.serving.store import AdapterStore, BaseModelShapes

# Routes vLLM adds under VLLM_ALLOW_RUNTIME_LORA_UPDATING that load adapters from any path.
_PATH_LOADING_ROUTES = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter",
                                  "/adapters", "/adapters/{adapter_name}"})
_FOREIGN_RESOLVER_ENV = ("VLLM_LORA_RESOLVER_CACHE_DIR", "VLLM_LORA_RESOLVER_HF_REPO_LIST")


@dataclass(frozen=True)
class ServeConfig:
    """What `serve` needs; `vllm_args` go to vLLM's parser last, so they override ours."""

    model: str
    store: Path
    hub: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_loras: int = 4
    max_lora_rank: int = 16
    adapt_timeout_s: float = 3600.0
    adapt_workers: int = 1  # warm worker processes; 0: a fresh process per job (cold)
    adapt_queue: int = 16  # jobs waiting at most; more get a 429
    ray_address: str | None = None  # the workers are Ray actors of this cluster ("local": a new one)
    vllm_args: tuple[str, ...] = ()
    engine: EngineConfig = field(default_factory=EngineConfig)  # the adaptation workers' engines

    def __post_init__(self):
        if self.max_lora_rank not in LORA_RANKS:
            raise ValueError(f"--max-lora-rank must be one of vLLM's ranks {LORA_RANKS}, "
                             f"got {self.max_lora_rank}")
        if self.max_loras < 1:
            raise ValueError(f"--max-loras must be >= 1, got {self.max_loras}")
        if self.adapt_workers < 0:
            raise ValueError(f"--adapt-workers must be >= 0 (0: a fresh process per job), got "
                             f"{self.adapt_workers}")
        if self.adapt_queue < 1:
            raise ValueError(f"--adapt-queue must be >= 1, got {self.adapt_queue}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"--port must be in 1..65535, got {self.port}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("--api-key is empty; give a key or leave the option out")
        if self.hub is not None and not Path(self.hub).is_dir():
            raise ValueError(f"--hub {self.hub} is not a folder; build a hub with "
                             "`lorahub-serve hub build`")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def vllm_argv(cfg: ServeConfig, model_folder: Path, on_cpu: bool) -> list[str]:
    """vLLM server arguments: the base model with LoRA, plus CPU settings that work here."""
    argv = ["--model", str(model_folder), "--served-model-name", cfg.model,
            "--host", cfg.host, "--port", str(cfg.port),
            "--enable-lora", "--max-loras", str(cfg.max_loras),
            "--max-lora-rank", str(cfg.max_lora_rank)]
    if on_cpu:
        # float32 is several times faster than bfloat16 on AVX2; the CPU backend refuses to
        # start unless KV cache + this fraction fit NUMA node 0 (see notes/environment.md).
        argv += ["--dtype", "float32", "--gpu-memory-utilization", "0.5",
                 # vLLM's CPU LoRA ops apply the last slot's adapter to base-model rows of a
                 # mixed batch; this extension patches them in each worker (vllm_cpu_fix.py).
                 "--worker-extension-cls", "lorahub_serve.serving.vllm_cpu_fix.CpuLoraIndexFix"]
    return argv + list(cfg.vllm_args)


def prepare_environment() -> bool:
    """Set the vLLM environment this server relies on; returns whether vLLM runs on CPU."""
    os.environ["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "1"  # makes vLLM consult resolvers
    for var in _FOREIGN_RESOLVER_ENV:
        if os.environ.pop(var, None):
            print(f"lorahub-serve: ignoring {var}; adapters come only from --store", file=sys.stderr)
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    from vllm.platforms import current_platform

    on_cpu = current_platform.is_cpu()
    if on_cpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return on_cpu


def parse_vllm_args(argv: list[str]) -> Namespace:
    """Parse with vLLM's own `vllm serve` parser and checks."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser(prog="lorahub-serve serve (vLLM)")).parse_args(argv)
    validate_parsed_serve_args(args)
    return args


def serve(cfg: ServeConfig) -> int:
    """Run the server until Ctrl-C or SIGTERM; returns the exit status."""
    from lorahub_serve.models import resolve_model

    folder = resolve_model(cfg.model)
    Path(cfg.store).mkdir(parents=True, exist_ok=True)
    on_cpu = prepare_environment()
    from vllm.logger import configure_logging_from_args

    args = parse_vllm_args(vllm_argv(cfg, folder, on_cpu))
    configure_logging_from_args(args)
    store = AdapterStore(Path(cfg.store), BaseModelShapes.from_folder(folder), args.max_lora_rank)
    print(f"lorahub-serve: starting vLLM for {cfg.model} on {cfg.url} (adapters: {store.root}"
          f"{', cpu' if on_cpu else ''})", flush=True)
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
        print(f"lorahub-serve: WARNING: listening on {cfg.host} without --api-key: anyone who "
              "can reach this port can use the server and start adaptation jobs", file=sys.stderr)
    reaper = start_reaper()  # kills vLLM's processes if this one is killed (they would run on)
    try:
        try:
            import uvloop

            uvloop.run(_serve(cfg, args, store, folder))
        except ImportError:
            asyncio.run(_serve(cfg, args, store, folder))
    finally:
        stop_reaper(reaper)
    print("lorahub-serve: stopped", flush=True)
    return 0


async def _serve(cfg: ServeConfig, args: Namespace, store: AdapterStore, folder: Path) -> None:
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.entrypoints.launchers.launcher import setup_server

    from lorahub_serve.serving.job_request import ContextCheck

    signals = StartupSignals()  # until serve_http installs vLLM's graceful-shutdown handlers
    signals.install()
    jobs = AdaptJobs(store, cfg.model, cfg.hub, cfg.adapt_timeout_s, workers=cfg.adapt_workers,
                     max_queued=cfg.adapt_queue, worker_factory=_ray_workers(cfg), engine_config=cfg.engine)
    for line in jobs.recover():  # before anything can write to the store
        print(f"lorahub-serve: {line}", flush=True)
    _, sock = setup_server(args, reuse_port=False)
    try:
        async with build_async_engine_client(args) as engine:
            jobs.check_examples = ContextCheck(folder, engine.model_config.max_model_len).load()
            jobs.start()  # warm workers load the model and hub while the server starts
            compositions = None
            if cfg.hub is not None:
                from lorahub_serve.serving.compositions import Compositions

                compositions = Compositions(store, cfg.hub, folder, cfg.model, args.max_lora_rank)
            app = await _build_app(engine, args, store, jobs, cfg.api_key, compositions)
            _attach_metrics(jobs, compositions)
            announcer = asyncio.create_task(_announce_when_ready(app, cfg, args, store))
            shutdown = await _serve_http(app, sock, args)
            announcer.cancel()
            await jobs.close()
        await shutdown
    finally:
        signals.unwound.set()
        await jobs.close()
        sock.close()
        if cfg.ray_address is not None:
            import ray

            ray.shutdown()  # leave Ray (and stop the cluster ray.init started for 'local')


def _attach_metrics(jobs: AdaptJobs, compositions) -> None:
    """Adaptation metrics into vLLM's Prometheus registry (`/metrics`; serving/metrics.py)."""
    from vllm.v1.metrics.prometheus import get_prometheus_registry

    from lorahub_serve.serving.metrics import AdaptMetrics

    jobs.on_change = AdaptMetrics(jobs, compositions, get_prometheus_registry()).on_change


def _ray_workers(cfg: ServeConfig):
    """With --ray-address, a factory of Ray actor workers (cluster/adapt_worker.py); else None."""
    if cfg.ray_address is None:
        return None
    from lorahub_serve.cluster.adapt_worker import RayAdaptWorker

    # "local" starts a cluster here; ray.init(None) would join any cluster already running here.
    return lambda slot: RayAdaptWorker(cfg.model, cfg.hub, cfg.ray_address, cfg.engine)


async def _build_app(engine, args: Namespace, store: AdapterStore, jobs: AdaptJobs,
                     api_key: str | None, compositions=None):
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.app import build_app
    from vllm.logger import init_logger
    from vllm.lora.resolver import LoRAResolverRegistry

    from lorahub_serve.serving.resolver import RESOLVER_NAME, StoreResolver
    from lorahub_serve.serving.routes import build_router

    resolver = StoreResolver(store)
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, resolver)
    tasks = await engine.get_supported_tasks()
    app = build_app(args, tasks, engine.model_config)
    vllm_routes = [r for r in app.router.routes if getattr(r, "path", None) not in _PATH_LOADING_ROUTES]
    app.router.routes[:] = []
    app.include_router(build_router(store, jobs))
    app.router.routes[:] = app.router.routes + vllm_routes  # ours first: our /v1/models wins
    app.openapi_schema = None
    from starlette.middleware import Middleware

    if compositions is not None:  # `"lorahub": {...}` in a completions body -> a stored adapter
        from lorahub_serve.serving.compositions import CompositionMiddleware

        app.user_middleware.insert(0, Middleware(CompositionMiddleware, compositions=compositions))
    if api_key:  # first in user_middleware = outermost
        app.user_middleware.insert(0, Middleware(ApiKeyMiddleware, api_key=api_key))
    app.middleware_stack = None  # vLLM's SageMaker bootstrap pre-built it; rebuilt on start
    await init_app_state(engine, app.state, args, tasks)
    models = app.state.openai_serving_models
    others = [r for r in models.lora_resolvers if r is not resolver]
    if others:
        init_logger(__name__).warning("dropping other LoRA resolvers %s: adapters come only from "
                                      "the store", [type(r).__name__ for r in others])
    models.lora_resolvers = [resolver]
    return app


async def _serve_http(app, sock, args: Namespace):
    """`serve_http` with the uvicorn settings vLLM's `build_and_serve` passes."""
    from vllm import envs
    from vllm.entrypoints.launchers.launcher import serve_http
    from vllm.entrypoints.launchers.utils.server_utils import get_uvicorn_log_config

    extra = {}
    if (log_config := get_uvicorn_log_config(args)) is not None:
        extra["log_config"] = log_config
    return await serve_http(
        app, sock=sock, enable_ssl_refresh=args.enable_ssl_refresh, host=args.host,
        port=args.port, log_level=args.uvicorn_log_level,
        access_log=not args.disable_uvicorn_access_log,
        timeout_keep_alive=envs.VLLM_HTTP_TIMEOUT_KEEP_ALIVE, ssl_keyfile=args.ssl_keyfile,
        ssl_certfile=args.ssl_certfile, ssl_ca_certs=args.ssl_ca_certs,
        ssl_cert_reqs=args.ssl_cert_reqs, ssl_ciphers=args.ssl_ciphers,
        h11_max_incomplete_event_size=args.h11_max_incomplete_event_size,
        h11_max_header_count=args.h11_max_header_count, **extra)


async def _announce_when_ready(app, cfg: ServeConfig, args: Namespace, store: AdapterStore):
    """Print the ready line once uvicorn accepts connections."""
    while not getattr(getattr(app.state, "server", None), "started", False):
        await asyncio.sleep(0.05)
    n = len(store.names())
    url = ServeConfig(cfg.model, cfg.store, host=args.host, port=args.port).url
    print(f"lorahub-serve: ready at {url}/v1 (model {cfg.model!r}, {n} adapter(s) in store"
          f"{', API key required' if cfg.api_key else ''}); Ctrl-C to stop", flush=True)
