"""The project's one error base: a problem with what the user gave (a model, a hub, examples, a
request) that the message names. `cli.main` prints any of them as one line and exits 2; the
library raises subclasses that also derive from the built-in type callers already catch."""

from __future__ import annotations


class LorahubError(Exception):
    """Base of every error lorahub-serve raises on purpose; its message says what to fix."""
