"""Adapter names and where they live: the only way a request's text becomes a path.

A name is 1-64 characters of letters, digits, `.`, `_` and `-`, not starting with `.` (so it can
never be `.`, `..`, a hidden folder such as the store's `.jobs/`, or contain a `/`). Its folder
is `store / name`, and the resolved folder (symlinks followed) must still lie inside the store.
"""

from __future__ import annotations

from pathlib import Path

from lorahub_serve.errors import LorahubError
from lorahub_serve.formats import NAME_RULE, valid_name


class AdapterNameError(LorahubError, ValueError):
    """A requested adapter name is not allowed; the message says why."""


def check_name(name: object) -> str:
    """Return `name` if it is a valid adapter name, else raise `AdapterNameError`."""
    if not isinstance(name, str):
        raise AdapterNameError(f"adapter name must be a string, got {type(name).__name__}")
    if not valid_name(name):
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise AdapterNameError(f"invalid adapter name {shown!r}: use {NAME_RULE}")
    return name


def adapter_dir(store: Path, name: str) -> Path:
    """The folder of adapter `name` in `store`, refusing anything that would leave the store."""
    check_name(name)
    root = Path(store).resolve()
    folder = (root / name).resolve()
    if not folder.is_relative_to(root) or folder == root:
        raise AdapterNameError(f"adapter {name!r} resolves outside the adapter store; refused")
    return folder


def inside(store: Path, path: Path) -> bool:
    """Whether `path` (symlinks followed) lies inside `store`."""
    return Path(path).resolve().is_relative_to(Path(store).resolve())
