"""Machine, date, git commit and command line of a run: recorded with every report and benchmark."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path


def _git(*args: str) -> str:
    """git in the working directory (a run from a checkout), else beside this package."""
    for cwd in (Path.cwd(), Path(__file__).resolve().parent):
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10,
                                 check=False)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0:
            return out.stdout.strip()
    return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _versions_and_gpu() -> dict:
    """Library versions and GPU name, for whichever of torch/triton are importable."""
    info: dict = {"gpu": None}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
            info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info


def task_data() -> str:
    """Where task files were read from, for sources read from files (generated reasoning-gym
    tasks carry their provenance in each record instead)."""
    from lorahub_serve.data import bbh_official, bigbench

    found = [f"bbh: {bbh_official.source()}"]
    if os.environ.get(bigbench.SOURCE_ENV):
        found.append(f"bigbench: {os.environ[bigbench.SOURCE_ENV]}")
    return "; ".join(found)


def metadata() -> dict:
    """Machine, date, commit and command line of this run."""
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0],  # other work on the machine skews CPU timings
        "task_data": task_data(),
        **_versions_and_gpu(),
    }
