"""`lorahub-serve adapt`: compose a hub's modules for one task from a few examples."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lorahub_serve.engine.arguments import add_search_arguments, search_config
from lorahub_serve.engine.config import EngineConfig, add_engine_arguments


def _cmd_adapt(a) -> int:
    from lorahub_serve.data.examples import load_jsonl

    examples = load_jsonl(a.examples)
    config = search_config(a)
    out = Path(a.out)
    if a.select is None and not getattr(a, "actors", 0):
        config = dataclasses.replace(config, select="loss")  # the measured default in process
    if getattr(a, "actors", 0):  # --actors is added, with its runner, by cluster/cli.py
        if a.merge:
            raise ValueError("--merge is not supported with --actors")
        return a.run_on_cluster(a, examples, config, out)
    from lorahub_serve.engine.adapt import Engine

    engine = Engine(a.model, a.hub, EngineConfig.from_args(a))
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
    add_search_arguments(p, default_select=None)
    add_engine_arguments(p)
    p.add_argument("--merge", action="store_true", help="also write OUT-merged, a full merged model")
    p.set_defaults(func=_cmd_adapt)
