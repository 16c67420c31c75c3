"""`lorahub-serve adapt`: compose a hub's modules for one task from a few examples."""

from __future__ import annotations

from pathlib import Path

from lorahub_serve.cli_args import (
    add_cluster_arguments,
    add_search_arguments,
    print_report,
    search_config,
)


def _cmd_adapt(a) -> int:
    from lorahub_serve.data.examples import load_jsonl

    examples = load_jsonl(a.examples)
    config = search_config(a)
    out = Path(a.out)
    if a.actors:
        from lorahub_serve.cluster import run_adapt_batch

        if a.merge:
            raise ValueError("--merge is not supported with --actors")
        report = run_adapt_batch(a.model, a.hub, [(out.name, examples)], out.parent, a.actors,
                                 a.ray_address, config, a.modules, a.rule, a.backend, a.token_budget,
                                 truncate=a.truncate, allow_pickle=a.allow_pickle, dtype=a.dtype,
                                 cpus_per_actor=a.cpus_per_actor)
        print_report(report)
        return 0 if not report.get("failed") else 1
    from lorahub_serve.engine.adapt import Engine

    engine = Engine(a.model, a.hub, a.rule, a.backend, a.token_budget, a.allow_pickle, a.truncate,
                    dtype=a.dtype)
    result = engine.adapt(examples, task=out.name, modules=a.modules, config=config, out=out,
                          merge=a.merge)
    print(f"best loss {result.best_loss:.4f} (objective {result.best_objective:.4f}) after "
          f"{result.evaluations} evaluations in {result.seconds:.1f} s "
          f"({result.evals_per_second:.2f} evals/s, {result.optimizer}); engine start-up "
          f"{engine.startup_seconds:.1f} s ({engine.dtype})")
    print(f"adapter written to {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("adapt", help="search composition weights for a task and export the adapter")
    p.add_argument("--model", default="smollm2-135m", help="registry name or Hugging Face folder")
    p.add_argument("--hub", required=True, help="hub folder (hub.json + adapter folders)")
    p.add_argument("--examples", required=True, help="JSONL of {\"input\", \"output\"}")
    p.add_argument("--out", required=True, help="adapter folder to write (e.g. STORE/NAME)")
    add_search_arguments(p)
    p.add_argument("--rule", choices=["lorahub", "linear"], default="lorahub")
    p.add_argument("--backend", choices=["auto", "torch", "triton"], default="auto")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="model and hub dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--token-budget", type=int, default=None,
                   help="padded tokens per micro-batch (default: 2048 on CPU, 8192 on CUDA)")
    p.add_argument("--merge", action="store_true", help="also write OUT-merged, a full merged model")
    p.add_argument("--truncate", action="store_true", help="truncate over-long examples instead of failing")
    p.add_argument("--allow-pickle", action="store_true", help="accept .bin (pickle) adapters you trust")
    add_cluster_arguments(p, default_actors=0)
    p.set_defaults(func=_cmd_adapt)
