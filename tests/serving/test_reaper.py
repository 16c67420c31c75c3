"""The reaper kills what a `kill -9`ed process started, and nothing after a clean exit.

No fixed sleeps: the parent runs `start_reaper()` as `serve` does, with one change, the reaper
it starts logs the pids of each scan of its parent's descendants (`REAPER_SCAN_LOG`) before it
notes them. The tests poll that log, with a deadline, until a scan has noted the child; then they
kill the parent or stop it cleanly, and poll, with a deadline, for the outcome.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="the reaper needs /proc")

DEADLINE = 20.0  # seconds; the reaper scans once a second

# The reaper's own main(), its `descendants` wrapped to log each scan (one line of pids).
SCAN_LOGGING_REAPER = """
import os, sys
from lorahub_serve.serving import reaper
scan = reaper.descendants
def logged(pid):
    found = scan(pid)
    with open(os.environ["REAPER_SCAN_LOG"], "a") as f:
        f.write(" ".join(map(str, found)) + "\\n")
    return found
reaper.descendants = logged
sys.exit(reaper.main(sys.argv[1:]))
"""

PARENT = """
import subprocess, sys
from lorahub_serve.serving.reaper import start_reaper, stop_reaper
popen = subprocess.Popen
def scan_logging(args, **kw):  # start_reaper's own Popen (session, pipes), the logging reaper run
    assert args[1:3] == ["-m", "lorahub_serve.serving.reaper"], args
    return popen([args[0], "-c", sys.argv[2], *args[3:]], **kw)
subprocess.Popen = scan_logging
reaper = start_reaper()
subprocess.Popen = popen
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, reaper.pid, flush=True)
sys.stdin.readline()  # the test says when (or kills us first)
if sys.argv[1] == "clean":
    stop_reaper(reaper)
    print("done", flush=True)
"""


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _poll(condition, what, deadline=DEADLINE):
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline:.0f} s: {what}")
        time.sleep(0.05)


def _noted(log: Path, pid: int) -> bool:
    return log.exists() and any(str(pid) in line.split() for line in log.read_text().splitlines())


def _start(mode, tmp_path):
    log = tmp_path / "scans"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, mode, SCAN_LOGGING_REAPER], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env={**os.environ, "REAPER_SCAN_LOG": str(log)})
    child, reaper = map(int, parent.stdout.readline().split())
    try:
        _poll(lambda: _noted(log, child), "a reaper scan noted the child")
    except AssertionError:
        _kill(parent.pid, child, reaper)
        raise
    return parent, child, reaper


def _kill(*pids):
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_kill_9_parent_takes_its_children_along(tmp_path):
    parent, child, reaper = _start("kill", tmp_path)
    try:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        _poll(lambda: not _alive(child), "the orphaned child was killed")
        _poll(lambda: not _alive(reaper), "the reaper left after killing")
    finally:
        _kill(child, reaper)


def test_clean_exit_leaves_others_alone(tmp_path):
    parent, child, reaper = _start("clean", tmp_path)
    try:
        parent.stdin.write("stop\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == "done"
        parent.kill()
        parent.wait(10)
        _poll(lambda: not _alive(reaper), "the reaper left")  # nothing is left that could kill
        assert _alive(child), "a clean exit must not kill anything"
    finally:
        _kill(child, reaper)
