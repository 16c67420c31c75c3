"""The work-pool interface that adapt-batch and hub build drive, and its in-process pool.

    free() -> int          how many more work items can start now
    submit(work)           start one (only when free() > 0)
    busy() -> bool         whether any item is started or waiting to be retried
    wait() -> [(work, outcome)]   block until at least one finishes; outcome is what the item
                           returned, or the Exception it raised
    close()

`InlinePool` runs one item at a time in this process, when `wait()` is called (no Ray);
`cluster.actors.RayPool` spreads items over Ray actors and re-runs those of actors that die.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class InlinePool:
    """One item at a time, run by `run(work)` in this process. catch: an exception the item
    raises becomes its outcome (as on Ray) instead of propagating."""

    def __init__(self, run: Callable[[Any], Any], catch: bool = True):
        self.run, self.catch = run, catch
        self._work = None

    def free(self) -> int:
        return 0 if self._work is not None else 1

    def submit(self, work) -> None:
        assert self._work is None, "InlinePool runs one item at a time"
        self._work = work

    def busy(self) -> bool:
        return self._work is not None

    def wait(self) -> list[tuple[Any, Any]]:
        work, self._work = self._work, None
        if work is None:
            return []
        try:
            out = self.run(work)
        except Exception as e:  # reported per item by the caller
            if not self.catch:
                raise
            out = e
        return [(work, out)]

    def close(self) -> None:
        pass  # the caller owns what `run` uses
