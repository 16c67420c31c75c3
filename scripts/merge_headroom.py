"""One headroom report from the parts of a run split over processes (each part's JSON holds its
rows and command): bench/results/headroom_smollm2.{json,md,png}.

    .venv/bin/python scripts/merge_headroom.py bench/results/headroom_part_a.json bench/results/headroom_part_b.json
"""

import json
import sys
from pathlib import Path

from lorahub_serve.eval.headroom_report import write_report


def main(parts: list[str]) -> None:
    docs = [json.loads(Path(p).read_text()) for p in parts]
    rows = [r for d in docs for r in d["rows"]]
    suite = json.loads(Path("suites/headroom-smollm2-135m.json").read_text())
    near = {c["task"]: c["closeness"] for c in suite["candidates"]}
    for r in rows:  # near/far against the hub as it is now (rows record it as it was at their start)
        r["closeness"] = near.get(r["task"], r["closeness"])
    command = " ; ".join(d["meta"].get("command", "?") for d in docs)
    paths = write_report(rows, Path("bench/results"), "headroom_smollm2", command)
    print(", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main(sys.argv[1:])
