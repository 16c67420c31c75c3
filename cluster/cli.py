"""`lorahub-serve adapt-batch`: adapt every task of a tasks.jsonl at once (found through `register`).

Importing this module imports neither torch nor Ray; the command does, when it runs.
"""

from __future__ import annotations

from pathlib import Path

from lorahub_serve.engine.arguments import (
    add_cluster_arguments,
    add_search_arguments,
    print_report,
    search_config,
)
from lorahub_serve.engine.cli import add_export_arguments, export_spec
from lorahub_serve.engine.config import EngineConfig, add_engine_arguments


def register(sub) -> None:
    """`adapt-batch`, and Ray for the commands of other subsystems (registered before this one):
    `adapt --actors N` and `hub build --actors N`. Their modules never import the cluster, so
    the import arrows run one way (cluster -> engine, hub)."""
    _add_adapt_batch(sub)
    if "adapt" in sub.choices:
        adapt = sub.choices["adapt"]
        add_cluster_arguments(adapt, default_actors=0)
        adapt.set_defaults(run_on_cluster=_adapt_on_cluster)
    build = _subcommand(sub, "hub", "build")
    if build is not None:
        build.add_argument("--actors", type=int, default=1, help="train this many modules at once on Ray actors")
        build.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: a local one)")
        build.set_defaults(trainer_pool=_hub_trainer_pool)


def _subcommand(sub, *names):
    """The parser of `lorahub-serve NAME SUB`, or None when it is not registered."""
    import argparse

    parser = sub.choices.get(names[0])
    for name in names[1:]:
        if parser is None:
            return None
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = actions[0].choices.get(name) if actions else None
    return parser


def _adapt_on_cluster(a, examples, config, out: Path) -> int:
    from lorahub_serve.cluster import run_adapt_batch

    report = run_adapt_batch(a.model, a.hub, [(out.name, examples)], out.parent, a.actors,
                             a.ray_address, config, a.modules, engine_config=EngineConfig.from_args(a),
                             cpus_per_actor=a.cpus_per_actor, export_rule=export_spec(a))
    print_report(report)
    return 0 if not report.get("failed") else 1


def _hub_trainer_pool(a):
    """`hub build --actors N`: the trainer pool factory `build_hub(trainers=...)` takes."""
    import functools

    from lorahub_serve.cluster.hub_trainers import trainer_pool

    return functools.partial(trainer_pool, a.model, a.actors, a.ray_address)


def _add_adapt_batch(sub) -> None:
    p = sub.add_parser(
        "adapt-batch", help="adapt many tasks at once on Ray actors (resumable)",
        description="Search composition weights for every task of TASKS (JSONL: one "
        '{"name", "examples": [...]} or {"name", "examples_path": FILE} per line) and write each '
        "task's adapter to OUT/<name>, as `adapt` does. The tasks' populations share forward "
        "passes; job state lives in OUT/.jobs/, so the same command after a crash resumes it. "
        "Exit status: 0 all done, 1 some tasks failed (see the report), 2 unusable arguments.")
    p.add_argument("tasks", type=Path, help="tasks.jsonl")
    p.add_argument("--hub", required=True, help="hub folder (hub.json + adapter folders)")
    p.add_argument("--out", required=True, type=Path, help="adapter store: task NAME goes to OUT/NAME")
    p.add_argument("--model", default="smollm2-135m", help="registry name or Hugging Face folder")
    add_cluster_arguments(p)
    add_search_arguments(p, "candidate evaluations per task, the start batch included",
                         select_modes=("loss", "random"))
    add_engine_arguments(p)
    add_export_arguments(p)
    p.add_argument("--max-batch", type=int, default=256, help="most candidates sent to an actor at once")
    p.add_argument("--job-dir", type=Path, default=None, help="job state folder (default OUT/.jobs/<id>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_adapt_batch)


def _cmd_adapt_batch(a) -> int:
    from lorahub_serve.cluster.driver import run_adapt_batch
    from lorahub_serve.cluster.tasks import read_tasks_file

    config = search_config(a)
    export = export_spec(a)  # a bad density or rule fails before the tasks are read
    specs = read_tasks_file(a.tasks)
    report = run_adapt_batch(
        a.model, a.hub, specs, a.out, a.actors, a.ray_address, config, a.modules,
        engine_config=EngineConfig.from_args(a), job_dir=a.job_dir, progress=not a.no_progress,
        cpus_per_actor=a.cpus_per_actor, max_batch=a.max_batch, export_rule=export)
    print_report(report)
    return 1 if report["failed"] else 0
