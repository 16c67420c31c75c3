"""Run `lorahub-serve serve` as a child process (tests, benchmarks): start, wait, stop.

Output goes to a log file, not a pipe, so a chatty server can never block on a full pipe.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

READY_MARK = "lorahub-serve: ready at "
# argv: PARENT_PID, then the command. PR_SET_PDEATHSIG survives exec; a parent that died before
# the call is caught by the getppid check.
_DIE_WITH_PARENT = ("import ctypes, os, signal, sys; "
                    "ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGKILL); "
                    "os.getppid() == int(sys.argv[1]) or sys.exit(1); "
                    "os.execv(sys.argv[2], sys.argv[2:])")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServeProcess:
    """`with ServeProcess([...serve options...], log) as srv:` -> srv.url once ready; stopped on exit.

    `options` are `lorahub-serve serve` arguments (include `--port`; vLLM's go after `--`).
    """

    def __init__(self, options: list[str], log_path: Path, start_timeout_s: float = 300,
                 stop_timeout_s: float = 60, env: dict[str, str] | None = None,
                 die_with_parent: bool = False):
        self.options, self.log_path = [str(o) for o in options], Path(log_path)
        self.start_timeout_s, self.stop_timeout_s = start_timeout_s, stop_timeout_s
        self.env = {**os.environ, **(env or {})}
        # Linux: SIGKILL the server when the thread that launched it dies (a Ray Serve replica
        # killed with SIGKILL takes its server along; the server's reaper then stops vLLM's).
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self.returncode: int | None = None

    def start(self) -> ServeProcess:
        self.launch()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.ready():
                return self
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"serve was not ready within {self.start_timeout_s:.0f} s; log "
                           f"{self.log_path}:\n{self.log_tail()}")

    def launch(self) -> None:
        """Start the process (returns at once; `ready()` says when it serves)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "lorahub_serve.cli", "serve", *self.options]
        if self.die_with_parent:  # set in the child itself, then exec'd into serve
            argv = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=self.env)

    def ready(self) -> bool:
        """Whether the server printed its ready line (sets `url`); raises if it has exited."""
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith(READY_MARK):
                self.url = line[len(READY_MARK):].split()[0].removesuffix("/v1")
                return True
        if self.proc.poll() is not None:
            raise RuntimeError(f"serve exited with status {self.proc.returncode} before it was "
                               f"ready; log {self.log_path}:\n{self.log_tail()}")
        return False

    def stop(self) -> int | None:
        """SIGTERM, wait for a clean exit, kill after `stop_timeout_s`; returns the exit status."""
        if self.proc is None or self.returncode is not None:
            return self.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.returncode = self.proc.returncode
        return self.returncode

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> ServeProcess:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

