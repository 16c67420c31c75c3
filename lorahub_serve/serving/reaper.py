"""A watchdog that stops what `serve` started when `serve` itself is killed (`kill -9` included).

vLLM's engine-core and worker processes do not watch the API server process: when it dies
without shutting down, they run on as orphans holding the model's memory. `start_reaper()`
launches this module as a small process in its own session; it notes `serve`'s descendants
every second (from /proc), and when its stdin reaches EOF - `serve` is gone - it SIGKILLs those
still running. A clean shutdown writes `exit` first, and the reaper leaves quietly. Linux only
(elsewhere `start_reaper` does nothing).

    python -m lorahub_serve.serving.reaper PID
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

_PROC = Path("/proc")


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of `pid`, or None if it is gone or a zombie."""
    try:
        fields = (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else (int(fields[1]), fields[19])


def descendants(pid: int) -> dict[int, str]:
    """Every process below `pid`, with its start time (so a reused pid is never mistaken)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(st[0], []).append(int(entry.name))
            starts[int(entry.name)] = st[1]
    out, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out[child] = starts[child]
            todo.append(child)
    return out


def main(argv: list[str]) -> int:
    parent = int(argv[0])
    seen: dict[int, str] = {}
    finished = threading.Event()
    clean = []

    def watch_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "exit":
                clean.append(True)
        finished.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    while not finished.wait(1.0):
        seen.update(descendants(parent))
    if clean:
        return 0
    for pid, start in seen.items():
        if pid != os.getpid() and (st := _stat(pid)) is not None and st[1] == start:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return 0


def start_reaper() -> subprocess.Popen | None:
    """Start the reaper for this process; call `stop_reaper` on a clean exit."""
    if not _PROC.is_dir():
        return None
    return subprocess.Popen([sys.executable, "-m", "lorahub_serve.serving.reaper", str(os.getpid())],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True)


def stop_reaper(proc: subprocess.Popen | None) -> None:
    """A clean exit: tell the reaper to leave without killing anything."""
    if proc is None:
        return
    with contextlib.suppress(OSError, ValueError):
        proc.stdin.write(b"exit\n")
        proc.stdin.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
