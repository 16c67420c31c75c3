"""`lorahub-serve serve`: the sub-command (found by `lorahub_serve.cli` through `register`).

Importing this module does not import vLLM; `serve` does, when it runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lorahub_serve.engine.config import EngineConfig, add_engine_arguments


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serve the base model and every adapter of a store with vLLM (OpenAI API)",
        description="Start vLLM's OpenAI-compatible server for --model with LoRA enabled. Every "
        "adapter in --store is served under its folder name, including ones written after start. "
        "Arguments after `--` go to vLLM unchanged (e.g. `-- --max-model-len 2048`).")
    p.add_argument("--model", required=True, help="registry name (e.g. smollm2-135m) or HF folder")
    p.add_argument("--store", required=True, type=Path, help="adapter store folder (STORE/NAME/)")
    p.add_argument("--hub", type=Path, default=None,
                   help="hub folder for POST /v1/adapters (adaptation is off without it)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every route")
    p.add_argument("--max-loras", type=int, default=4, help="adapters in one batch (default 4)")
    p.add_argument("--max-lora-rank", type=int, default=16,
                   help="largest adapter rank served (1, 8, 16, 32, 64, ...; default 16)")
    p.add_argument("--adapt-timeout", type=float, default=3600.0,
                   help="seconds before an adaptation job is stopped (default 3600)")
    p.add_argument("--adapt-workers", type=int, default=1,
                   help="worker processes that keep the model and hub loaded for adaptation jobs "
                   "(default 1; 0: start a fresh process per job)")
    p.add_argument("--adapt-queue", type=int, default=16,
                   help="adaptation jobs that may wait in the queue; more get HTTP 429 (default 16)")
    p.add_argument("--ray-address", default=None,
                   help="run the adaptation workers as Ray actors of this cluster ('local': start "
                   "one here), and with --replicas the replicas too; the store must be visible "
                   "to every node")
    p.add_argument("--replicas", type=int, default=0, metavar="N",
                   help="run N replicas of the server behind one endpoint on Ray Serve (on "
                   "--ray-address, default a local cluster); the store must be visible to every "
                   "node (docs/cluster.md)")
    add_engine_arguments(p)  # for the adaptation workers (POST /v1/adapters)
    p.add_argument("vllm_args", nargs=argparse.REMAINDER,
                   help="`-- ARGS...`: passed to vLLM's server unchanged")
    p.set_defaults(func=_cmd_serve)


def serve_config(a):
    """The `ServeConfig` of parsed `serve` arguments (vLLM's after `--`)."""
    from lorahub_serve.serving.server import ServeConfig

    extra = list(a.vllm_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    elif extra:
        raise ValueError(f"unrecognized arguments {extra}; put vLLM's after `--`")
    return ServeConfig(model=a.model, store=a.store, hub=a.hub, host=a.host, port=a.port,
                       api_key=a.api_key, max_loras=a.max_loras, max_lora_rank=a.max_lora_rank,
                       adapt_timeout_s=a.adapt_timeout, adapt_workers=a.adapt_workers,
                       adapt_queue=a.adapt_queue, ray_address=a.ray_address,
                       vllm_args=tuple(extra), engine=EngineConfig.from_args(a))


def _cmd_serve(a) -> int:
    from lorahub_serve.serving.server import serve

    cfg = serve_config(a)
    try:
        if a.replicas:
            from lorahub_serve.serving.replicas import run_replicas

            return run_replicas(cfg, a.replicas)
        return serve(cfg)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        raise  # cli.main: one line, exit 2
    except OSError as e:  # typically: the port is taken
        print(f"lorahub-serve serve: error: cannot serve on {cfg.url}: {e}", file=sys.stderr)
        return 1
