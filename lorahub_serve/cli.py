"""The `lorahub-serve` command line."""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

from lorahub_serve.errors import LorahubError


def _cmd_model_fetch(a) -> int:
    from lorahub_serve.models import fetch_model

    fetch_model(a.name)
    return 0


def _cmd_data_list(a) -> int:
    from lorahub_serve.data import bigbench, is_bbh

    tasks = bigbench.list_tasks()
    if a.bbh:
        tasks = [t for t in tasks if is_bbh(t)]
    for t in tasks:
        print(f"{t}\t{'bbh (held out)' if is_bbh(t) else 'upstream'}")
    print(f"# {len(tasks)} tasks", file=sys.stderr)
    return 0


def _cmd_data_fetch(a) -> int:
    from lorahub_serve.data import bigbench

    print(f"{len(bigbench.list_tasks())} BIG-bench tasks in {bigbench.sdist_path()}")
    return 0


def _cmd_hub_build(a) -> int:
    from lorahub_serve.hub_build import BROAD_HUB_TASKS, build_hub
    from lorahub_serve.training import TrainConfig

    cfg = TrainConfig(rank=a.rank, alpha=2 * a.rank, steps=a.steps, lr=a.lr, max_length=a.max_length,
                      target_modules=tuple(a.target_modules.split(",")), dtype=a.dtype)
    if a.broad:
        a.tasks = list(a.tasks or []) + [t for t in BROAD_HUB_TASKS if t not in (a.tasks or [])]
    trainers = None
    if a.actors > 1 or a.ray_address:
        import functools

        from lorahub_serve.cluster.hub_trainers import trainer_pool

        trainers = functools.partial(trainer_pool, a.model, a.actors, a.ray_address)
    manifest = build_hub(a.model, Path(a.out), a.tasks, a.modules, cfg,
                         retrain_stale=a.retrain_stale, trainers=trainers)
    print(f"hub {a.out}: {len(manifest['modules'])} modules")
    return 0


def _cmd_hub_centroids(a) -> int:
    from lorahub_serve.hub_centroids import compute_centroids

    n = compute_centroids(a.model, Path(a.hub), a.inputs)
    print(f"hub {a.hub}: {n} centroids computed")
    return 0


def _cmd_suite_build(a) -> int:
    from lorahub_serve.suite_build import SUITE_CANDIDATES, build_suite
    from lorahub_serve.training import TrainConfig

    cfg = TrainConfig(steps=a.steps, lr=a.lr, max_length=a.max_length, dtype=a.dtype)
    m = build_suite(a.model, Path(a.hub), Path(a.oracles), Path(a.out),
                    tuple(a.tasks or SUITE_CANDIDATES), cfg, a.gate_n, a.min_gain)
    print(f"suite {a.out}: {len(m['tasks'])} of {len(m['candidates'])} candidates kept")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lorahub-serve", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="base models").add_subparsers(dest="action", required=True)
    f = model.add_parser("fetch", help="download and convert a registry model into the cache")
    f.add_argument("name")
    f.set_defaults(func=_cmd_model_fetch)

    data = sub.add_parser("data", help="BIG-bench task data").add_subparsers(dest="action", required=True)
    dl = data.add_parser("list", help="list BIG-bench tasks")
    dl.add_argument("--bbh", action="store_true", help="only the held-out BBH tasks")
    dl.set_defaults(func=_cmd_data_list)
    df = data.add_parser("fetch", help="download the BIG-bench sdist into the cache")
    df.set_defaults(func=_cmd_data_fetch)

    hub = sub.add_parser("hub", help="LoRA hubs").add_subparsers(dest="action", required=True)
    hb = hub.add_parser("build", help="train one LoRA per upstream BIG-bench task (resumable)")
    hb.add_argument("--model", default="smollm2-135m")
    hb.add_argument("--out", required=True)
    hb.add_argument("--tasks", nargs="*", default=None, help="task names (default: curated list)")
    hb.add_argument("--modules", type=int, default=32,
                    help="modules the hub should hold, from the curated task list (default 32)")
    hb.add_argument("--actors", type=int, default=1, help="train this many modules at once on Ray actors")
    hb.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: a local one)")
    hb.add_argument("--rank", type=int, default=8)
    hb.add_argument("--steps", type=int, default=60)
    hb.add_argument("--lr", type=float, default=1e-3)
    hb.add_argument("--target-modules", default="q_proj,v_proj")
    hb.add_argument("--max-length", type=int, default=256, help="skip training examples longer than this")
    hb.add_argument("--retrain-stale", action="store_true",
                    help="retrain modules trained in an answer format the data no longer uses")
    hb.add_argument("--broad", action="store_true",
                    help="also train the broader hub's task list (hub_build.BROAD_HUB_TASKS)")
    hb.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="training precision: bfloat16 autocast is ~1.5x faster on CPUs with AVX512-BF16")
    hb.set_defaults(func=_cmd_hub_build)

    hc = hub.add_parser("centroids", help="each module's input centroid (for adapt --select retrieve)")
    hc.add_argument("--model", default="smollm2-135m")
    hc.add_argument("--hub", required=True)
    hc.add_argument("--inputs", type=int, default=32, help="training inputs per module")
    hc.set_defaults(func=_cmd_hub_centroids)

    suite = sub.add_parser("suite", help="the headroom suite").add_subparsers(dest="action", required=True)
    sb = suite.add_parser("build", help="train an oracle per candidate task and keep the tasks it "
                          "can learn (resumable)")
    sb.add_argument("--model", default="smollm2-135m")
    sb.add_argument("--hub", required=True, help="the hub the suite is held out from")
    sb.add_argument("--oracles", required=True, help="folder for the oracle modules (a hub of its own)")
    sb.add_argument("--out", required=True, help="the suite manifest (JSON)")
    sb.add_argument("--tasks", nargs="*", default=None, help="candidates (default: SUITE_CANDIDATES)")
    sb.add_argument("--steps", type=int, default=24)
    sb.add_argument("--lr", type=float, default=2e-3)
    sb.add_argument("--max-length", type=int, default=128)
    sb.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    sb.add_argument("--gate-n", type=int, default=100, help="evaluation examples the gate scores")
    sb.add_argument("--min-gain", type=float, default=20.0)
    sb.set_defaults(func=_cmd_suite_build)

    for register in _extensions():
        register(sub)
    return p


def _extensions():
    """Sub-commands that live beside their subsystem (adapt, serve, cluster, eval)."""
    import importlib

    for mod in ("lorahub_serve.cli_engine", "lorahub_serve.serving.cli", "lorahub_serve.cluster.cli",
                "lorahub_serve.cli_eval"):
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
            continue
        yield m.register


# What a user's input can raise: the project's errors, and the built-in ones that name a bad
# value or a missing file. One line each, exit 2; LORAHUB_DEBUG=1 shows the traceback instead.
USER_ERRORS = (LorahubError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError)


def error_line(command: str, e: BaseException) -> str:
    """`lorahub-serve <command>: error: <first line of the message>`."""
    text = str(e).strip().splitlines()
    return f"lorahub-serve {command}: error: {text[0] if text else type(e).__name__}"


def main(argv: list[str] | None = None) -> int:
    import os

    args = build_parser().parse_args(argv)
    command = " ".join(x for x in (args.command, getattr(args, "action", None)) if x)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if os.environ.get("LORAHUB_DEBUG"):
            raise
        print(error_line(command, e), file=sys.stderr)
        return 2


def run() -> None:
    """The `lorahub-serve` command: `main`, then exit without the interpreter's last garbage
    collection, which walks every object torch and transformers made (~0.7 s of each `adapt`).
    Everything is written and closed by then; exit handlers (Ray's included) still run. Skipped
    when Triton was loaded (CUDA, or the interpreter): it would print its bindings' objects as leaked."""
    code = main()
    if "triton" not in sys.modules:  # Triton's bindings report objects alive at exit as leaks
        gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
