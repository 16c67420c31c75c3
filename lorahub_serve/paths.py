"""Where lorahub-serve keeps its files: one cache root, overridable by LORAHUB_HOME."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """Cache root (`$LORAHUB_HOME`, default `~/.cache/lorahub-serve`), created on first use."""
    root = Path(os.environ.get("LORAHUB_HOME", Path.home() / ".cache" / "lorahub-serve"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    return _sub("models")


def downloads_dir() -> Path:
    return _sub("downloads")


def _sub(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def repo_root() -> Path:
    """The source checkout (holds the committed default hub); only valid in a clone."""
    return Path(__file__).resolve().parent.parent
