"""Shared by the benchmark scripts: machine/date/commit metadata and writing results.

`write_result(name, figures, markdown)` writes bench/results/<name>-<UTC stamp>.json (metadata +
figures) and .md (metadata header + the script's markdown) and returns both paths.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
_REPO = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _cpu_name() -> str:
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


def metadata() -> dict:
    """Machine, date, commit and command line of this run."""
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0],  # other work on the machine skews CPU timings
        **_versions_and_gpu(),
    }


def write_result(name: str, figures: dict, markdown: str) -> tuple[Path, Path]:
    """Write <name>-<stamp>.json and .md under bench/results/; returns (json_path, md_path)."""
    meta = metadata()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    json_path, md_path = RESULTS / f"{name}-{stamp}.json", RESULTS / f"{name}-{stamp}.md"
    json_path.write_text(json.dumps({"name": name, "meta": meta, "figures": figures}, indent=2))
    header = "\n".join(f"- {k}: {v}" for k, v in meta.items())
    md_path.write_text(f"# {name}\n\n{header}\n\n{markdown.strip()}\n")
    return json_path, md_path
