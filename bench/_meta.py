"""Shared by the benchmark scripts: machine/date/commit metadata and writing results.

`write_result(name, figures, markdown)` writes bench/results/<name>-<UTC stamp>.json (metadata +
figures) and .md (metadata header + the script's markdown) and returns both paths.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from lorahub_serve.run_metadata import metadata

RESULTS = Path(__file__).resolve().parent / "results"


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
