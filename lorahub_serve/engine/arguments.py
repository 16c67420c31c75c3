"""Command-line pieces shared by `adapt`, `adapt-batch` and `eval`: the search and module
arguments, the cluster arguments, and the batch report's printout.

Light on purpose (no torch, no nevergrad, no Ray): every sub-command's parser imports it.
"""

from __future__ import annotations

import sys

from lorahub_serve.choices import OPTIMIZERS, SELECT_MODES


def modules_arg(value: str):
    """`--modules 20` (K seeded-random modules) or `--modules a,b,c` (named modules)."""
    return int(value) if value.isdigit() else [v for v in value.split(",") if v]


def add_search_arguments(p, budget_help: str = "candidate evaluations, the start batch included",
                         select_modes: tuple[str, ...] = SELECT_MODES) -> None:
    """--modules, --budget, --seed, --optimizer, --popsize, --sigma, --select, --no-onehot-start.
    --select defaults to loss on every path, as `SearchConfig` does (measured on the headroom
    suite: +4.3 points over random, CI 1.8 to 7.6, bench/results/headroom_smollm2.md); random is
    the paper's. adapt-batch and adapt --actors score the modules alone on their workers."""
    p.add_argument("--modules", type=modules_arg, default=None,
                   help="K (default min(20, hub size); which K: --select) or comma-separated names")
    p.add_argument("--budget", type=int, default=40, help=budget_help)
    p.add_argument("--seed", type=int, default=0, help="search seed")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="cma",
                   help="cma (default): w = 0 and each module alone in one batch, then batched CMA-ES "
                        "from the best of them; de: the same with differential evolution; ngopt: the "
                        "reference's sequential NGOpt loop (its state does not pickle: a resumed "
                        "adapt-batch job restarts its unfinished tasks)")
    p.add_argument("--popsize", type=int, default=None,
                   help="population (default: leaves at least four updates after the start batch)")
    p.add_argument("--sigma", type=float, default=None, help="CMA-ES initial step in weight units (default 0.1)")
    p.add_argument("--select", choices=select_modes, default="loss",
                   help="which K modules: the K lowest few-shot losses alone (default; with K >= hub size "
                   "every module, no pass), seeded random (the paper's), or the K nearest by input centroid")
    p.add_argument("--no-onehot-start", action="store_true", help="start the population search at w = 0")
    add_contrast_argument(p)


def add_contrast_argument(p) -> None:
    """--contrast (adapt, adapt-batch, eval)."""
    p.add_argument("--contrast", type=float, default=0.0,
                   help="weight of the option term (examples with options also score the other "
                        "options; engine/objective.py); default 0")


def search_config(a):
    """The `SearchConfig` the parsed arguments describe (raises ValueError naming a bad value)."""
    from lorahub_serve.engine.layer_groups import GLOBAL, parse_weights_spec
    from lorahub_serve.engine.search import SearchConfig

    extra = {} if a.sigma is None else {"sigma": a.sigma}
    return SearchConfig(budget=a.budget, seed=a.seed, optimizer=a.optimizer, popsize=a.popsize,
                        onehot_start=not a.no_onehot_start, contrast=a.contrast,
                        select=a.select, groups=parse_weights_spec(getattr(a, "weights", GLOBAL)), **extra)


def add_cluster_arguments(p, default_actors: int = 1) -> None:
    """--actors, --ray-address, --cpus-per-actor (adapt-batch; adapt with default_actors=0)."""
    p.add_argument("--actors", type=int, default=default_actors,
                   help=f"evaluator actors, each holding the model once (default {default_actors}; "
                        "0: evaluate in this process, without Ray)")
    p.add_argument("--ray-address", default=None,
                   help="join this Ray cluster (e.g. ray://head:10001 or auto); default: start a "
                        "local one with this machine's CPUs and stop it at the end")
    p.add_argument("--cpus-per-actor", type=int, default=None,
                   help="CPUs each actor reserves (default: an even share; 1 per GPU actor is enough)")


def print_report(report: dict, file=None) -> None:
    """One line per task, then totals."""
    file = file or sys.stdout
    for name, e in report["tasks"].items():
        if e["status"] == "failed":
            print(f"{name}\tfailed\t{e['error']}", file=file)
        else:
            loss = "n/a" if e["best_loss"] is None else f"{e['best_loss']:.4f}"
            print(f"{name}\t{e['status']}\tloss {loss}\t{e['evaluations']} evals\t{e['out_dir'] or ''}",
                  file=file)
    print(f"# {report['done']} done, {report['done-earlier']} done earlier, {report['failed']} failed; "
          f"{report['evaluations']} evaluations in {report['seconds']:.1f} s "
          f"({report['evals_per_second'] or 0:.2f}/s); report: {report['job_dir']}/report.json",
          file=file)
