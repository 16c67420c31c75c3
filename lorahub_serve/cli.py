"""The `lorahub-serve` command line: `model` and `data` here; every other command lives beside its
subsystem (`hub/cli.py`, `engine/cli.py`, `serving/cli.py`, `cluster/cli.py`, `eval/cli.py`) and
is assembled by `build_parser`. Errors: one line, exit 2 (`main`)."""

from __future__ import annotations

import argparse
import gc
import sys

from lorahub_serve.errors import LorahubError


def _cmd_model_fetch(a) -> int:
    from lorahub_serve.models import fetch_model

    fetch_model(a.name)
    return 0


def _cmd_data_list(a) -> int:
    from lorahub_serve.data import tasks

    sources = [a.source] if a.source else list(tasks.SOURCES)
    for src in sources:
        names = [] if src == "jsonl" else tasks.list_tasks(src) if a.source else _listed_or_none(src)
        state = ("name a file: path/to/examples.jsonl" if src == "jsonl" else
                 f"{len(names)} tasks" if names else "not here (see `data fetch`)")
        print(f"# {src}: {tasks.SOURCES[src]} -- {state}")
        for t in names:
            print(f"{t}\t{'held out: evaluation only' if tasks.is_eval_only(t) else ''}"
                  f"{'reserved: never used' if tasks.is_reserved(t) else ''}".rstrip())
    return 0


def _listed_or_none(source: str) -> list[str]:
    from lorahub_serve.data import tasks

    try:
        return tasks.list_tasks(source)
    except LorahubError:
        return []


def _cmd_data_fetch(a) -> int:
    from pathlib import Path

    if a.what == "bbh":
        from lorahub_serve.data import bbh_official

        folder = bbh_official.fetch(Path(a.source) if a.source else None)
        print(f"{len(bbh_official.TASKS)} BBH tasks in {folder}")
        return 0
    from lorahub_serve.data import bigbench

    if a.source:
        print(f"[data] copied into {bigbench.store_sdist(a.source)}")
    print(f"{len(bigbench.list_tasks())} BIG-bench tasks from {bigbench.source()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lorahub-serve", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="base models").add_subparsers(dest="action", required=True)
    f = model.add_parser("fetch", help="download and convert a registry model into the cache")
    f.add_argument("name")
    f.set_defaults(func=_cmd_model_fetch)

    data = sub.add_parser("data", help="task sources: reasoning-gym, BBH, BIG-bench, your JSONL").add_subparsers(
        dest="action", required=True)
    dl = data.add_parser("list", help="the task sources and their task names")
    dl.add_argument("--source", choices=("rg", "bbh", "bigbench"), default=None, help="one source only")
    dl.set_defaults(func=_cmd_data_list)
    df = data.add_parser("fetch", help="fetch task files: `bbh` (the official BBH files) or `bigbench` (a copy)")
    df.add_argument("what", choices=("bbh", "bigbench"))
    df.add_argument("--from", dest="source", default=None, metavar="PATH",
                    help="bbh: a folder with the 27 <task>.json files; bigbench: a copy of "
                         "bigbench-1.0.0.tar.gz (instead of downloading)")
    df.set_defaults(func=_cmd_data_fetch)

    for register in _extensions():
        register(sub)
    return p


def _extensions():
    """Sub-commands that live beside their subsystem (hub, adapt, serve, adapt-batch, eval, suite)."""
    import importlib

    for mod in ("lorahub_serve.hub.cli", "lorahub_serve.engine.cli", "lorahub_serve.serving.cli",
                "lorahub_serve.cluster.cli", "lorahub_serve.eval.cli"):
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
