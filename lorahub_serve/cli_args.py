"""Command-line arguments shared by `adapt`, `adapt-batch` and `eval`: the search and the modules.

Light on purpose (no torch, no nevergrad): every sub-command's parser imports it.
"""

from __future__ import annotations


def modules_arg(value: str):
    """`--modules 20` (K seeded-random modules) or `--modules a,b,c` (named modules)."""
    return int(value) if value.isdigit() else [v for v in value.split(",") if v]


def add_search_arguments(p, budget_help: str = "candidate evaluations, the start batch included") -> None:
    """--modules, --budget, --seed, --optimizer, --popsize, --sigma, --no-onehot-start."""
    p.add_argument("--modules", type=modules_arg, default=None,
                   help="K (seeded-random modules, default min(20, hub size)) or comma-separated names")
    p.add_argument("--budget", type=int, default=40, help=budget_help)
    p.add_argument("--seed", type=int, default=0, help="search seed")
    p.add_argument("--optimizer", choices=["cma", "de", "ngopt"], default="cma",
                   help="cma (default): w = 0 and each module alone in one batch, then batched CMA-ES "
                        "from the best of them; de: the same with differential evolution; ngopt: the "
                        "reference's sequential NGOpt loop (its state does not pickle: a resumed "
                        "adapt-batch job restarts its unfinished tasks)")
    p.add_argument("--popsize", type=int, default=None,
                   help="population (default: leaves at least four updates after the start batch)")
    p.add_argument("--sigma", type=float, default=None, help="CMA-ES initial step in weight units (default 0.1)")
    p.add_argument("--no-onehot-start", action="store_true", help="start the population search at w = 0")


def search_config(a):
    """The `SearchConfig` the parsed arguments describe (raises ValueError naming a bad value)."""
    from .engine.search import SearchConfig

    extra = {} if a.sigma is None else {"sigma": a.sigma}
    return SearchConfig(budget=a.budget, seed=a.seed, optimizer=a.optimizer, popsize=a.popsize,
                        onehot_start=not a.no_onehot_start, **extra)
