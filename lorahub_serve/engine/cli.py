"""`lorahub-serve adapt`: compose a hub's modules for one task from a few examples."""

from __future__ import annotations

from pathlib import Path

from lorahub_serve.choices import EXPORT_RULES, SIGN_METHODS
from lorahub_serve.engine.arguments import add_search_arguments, search_config
from lorahub_serve.engine.config import EngineConfig, add_engine_arguments


def export_spec(a):
    """The `MergeSpec` of --export-rule (default: --rule), --density, --majority-sign-method and
    --merge-seed (a ValueError naming a bad value or a parameter the rule does not take)."""
    from lorahub_serve.engine.merge import MergeSpec

    return MergeSpec(a.export_rule or a.rule, a.density, a.majority_sign_method, a.merge_seed)


def _cmd_adapt(a) -> int:
    from lorahub_serve.data.examples import load_jsonl

    examples = load_jsonl(a.examples)
    config = search_config(a)
    export = export_spec(a)
    refine = refine_config(a)
    out = Path(a.out)
    if getattr(a, "actors", 0):  # --actors is added, with its runner, by cluster/cli.py
        if a.merge:
            raise ValueError("--merge is not supported with --actors")
        if refine.steps or config.groups > 1:
            raise ValueError("--refine and --weights per-layer-group:G are not supported with --actors; "
                             "adapt without --actors")
        return a.run_on_cluster(a, examples, config, out)
    from lorahub_serve.engine.adapt import Engine

    engine = Engine(a.model, a.hub, EngineConfig.from_args(a))
    result = engine.adapt(examples, task=out.name, modules=a.modules, config=config, out=out,
                          merge=a.merge, export_rule=export, refine=refine)
    print(f"best loss {result.best_loss:.4f} (objective {result.best_objective:.4f}) after "
          f"{result.evaluations} evaluations in {result.seconds:.1f} s "
          f"({result.evals_per_second:.2f} evals/s, {result.optimizer}); engine start-up "
          f"{engine.startup_seconds:.1f} s ({engine.dtype})")
    if "refine" in result.extra:
        r = result.extra["refine"]
        print(f"refined {r['on']}: {r['steps_kept']} of {r['steps_asked']} steps kept ({r['guard']}), "
              f"few-shot loss {r['loss_before']:.4f} -> {r['loss_after']:.4f} in {r['seconds']:.1f} s")
    print(f"adapter written to {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("adapt", help="search composition weights for a task and export the adapter")
    p.add_argument("--model", default="smollm2-135m", help="registry name or Hugging Face folder")
    p.add_argument("--hub", required=True, help="hub folder (hub.json + adapter folders)")
    p.add_argument("--examples", required=True, help="JSONL of {\"input\", \"output\"}")
    p.add_argument("--out", required=True, help="adapter folder to write (e.g. STORE/NAME)")
    add_search_arguments(p)
    add_adapt_arguments(p)
    add_engine_arguments(p)
    p.add_argument("--merge", action="store_true", help="also write OUT-merged, a full merged model")
    add_export_arguments(p)
    p.set_defaults(func=_cmd_adapt)


def refine_config(a):
    """The `RefineConfig` of --refine, --refine-on, --refine-lr, --refine-guard (a ValueError
    naming a bad value)."""
    from lorahub_serve.engine.refine import RefineConfig

    return RefineConfig(steps=a.refine, on=a.refine_on, lr=a.refine_lr, guard=a.refine_guard)


def add_adapt_arguments(p) -> None:
    """--weights and --refine*: beyond the paper's LoraHub (defaults keep it; not with --actors)."""
    from lorahub_serve.engine.refine import GUARDS, REFINE_ON

    p.add_argument("--weights", default="global", metavar="global|per-layer-group:G",
                   help="global (default): one weight per module; per-layer-group:G: one per module "
                        "and per group of layers (G contiguous groups of the model's blocks)")
    p.add_argument("--refine", type=int, default=0, metavar="N",
                   help="after the search, N gradient steps on the same examples from the composition "
                        "(default 0: none); how many are kept: --refine-guard")
    p.add_argument("--refine-on", choices=REFINE_ON, default="weights",
                   help="weights: the composition weights only (lorahub.json stays exact); factors: "
                        "the exported adapter's A, B (no longer a weighted sum of hub modules)")
    p.add_argument("--refine-lr", type=float, default=None,
                   help="Adam's learning rate (default 1e-2 for weights, 1e-3 for factors)")
    p.add_argument("--refine-guard", choices=GUARDS, default="loo",
                   help="loo (default): keep the step count with the lowest leave-one-out loss (0 "
                        "included); none: keep all N steps")


def add_export_arguments(p) -> None:
    """--export-rule, --density, --majority-sign-method, --merge-seed: how OUT composes the
    weights found (the search itself composes with --rule)."""
    p.add_argument("--export-rule", choices=EXPORT_RULES, default=None,
                   help="rule of the exported adapter (default: --rule): lorahub (rank max r), "
                        "linear (exact, rank sum r), or PEFT's merges of modules of one rank r: "
                        "ties, dare_linear, dare_ties, magnitude_prune")
    p.add_argument("--density", type=float, default=None,
                   help="ties, dare_*, magnitude_prune: fraction of each factor's entries kept, in "
                        "(0, 1] (default 0.5)")
    p.add_argument("--majority-sign-method", choices=SIGN_METHODS, default=None,
                   help="ties, dare_ties: elect each entry's sign by total value or by frequency "
                        "(default total)")
    p.add_argument("--merge-seed", type=int, default=None,
                   help="dare_*: seed of the random pruning (default 0)")
