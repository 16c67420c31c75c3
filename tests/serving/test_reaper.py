"""The reaper kills what a `kill -9`ed process started, and nothing after a clean exit."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="the reaper needs /proc")

PARENT = """
import subprocess, sys, time
from lorahub_serve.serving.reaper import start_reaper, stop_reaper
reaper = start_reaper()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
if sys.argv[1] == "clean":
    time.sleep(1.5)
    stop_reaper(reaper)
    print("done", flush=True)
else:
    time.sleep(120)
"""


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid, timeout=15):
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


def test_kill_9_parent_takes_its_children_along():
    parent = subprocess.Popen([sys.executable, "-c", PARENT, "kill"], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    time.sleep(2.5)  # the reaper notes descendants once a second
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(10)
    gone = _wait_gone(child)
    if not gone:
        os.kill(child, signal.SIGKILL)
    assert gone, "the orphaned child was not killed"


def test_clean_exit_leaves_others_alone():
    parent = subprocess.Popen([sys.executable, "-c", PARENT, "clean"], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert parent.stdout.readline().strip() == "done"
    parent.kill()
    parent.wait(10)
    time.sleep(2)
    try:
        assert _alive(child), "a clean exit must not kill anything"
    finally:
        os.kill(child, signal.SIGKILL)
