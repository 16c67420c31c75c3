"""Atomic writes: build in a temporary sibling, then rename, so readers never see half a result."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_dir(target: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target` in one rename.

    On error the temporary folder is removed and `target` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it")
    tmp = make_temp_dir(target)
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def make_temp_dir(target: Path) -> Path:
    """A hidden temporary folder beside `target`, named after it and its writer:
    `.<name>.tmp-<host>-<pid>-<random>`, so a cleaner can tell a dead writer's (`writer_gone`)."""
    target = Path(target)
    prefix = f".{target.name}.tmp-{os.uname().nodename}-{os.getpid()}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))


_WRITER = re.compile(r"\.tmp-(?P<host>.+)-(?P<pid>\d+)-[^-]+$")


def writer_gone(path: Path) -> bool:
    """Whether `path`, made by `make_temp_dir`, was made by a process of this host that has
    exited (False when that cannot be told: another host, or another naming)."""
    m = _WRITER.search(Path(path).name)
    if m is None or m["host"] != os.uname().nodename:
        return False
    try:
        os.kill(int(m["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to `path` through a temporary file and `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
