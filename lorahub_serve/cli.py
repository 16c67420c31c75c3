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

    data = sub.add_parser("data", help="BIG-bench task data").add_subparsers(dest="action", required=True)
    dl = data.add_parser("list", help="list BIG-bench tasks")
    dl.add_argument("--bbh", action="store_true", help="only the held-out BBH tasks")
    dl.set_defaults(func=_cmd_data_list)
    df = data.add_parser("fetch", help="download the BIG-bench sdist into the cache (or copy one: --from)")
    df.add_argument("--from", dest="source", default=None, metavar="SDIST",
                    help="a copy of bigbench-1.0.0.tar.gz to store in the cache instead of downloading")
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
