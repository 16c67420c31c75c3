"""bbh_table: the BBH table with its floor beside it (issue 19), from `eval --suite bbh` reports and
`bbh_floor.py`'s oracle rows.

Per task, each method's score in the task's metric (rank classification for multiple choice, exact
match for object_counting), the mean over its seeds, beside chance, the majority label, and the
oracle (a LoRA trained with gradients on the task's own examples outside the evaluation set). The
average over task-seeds has a 95 % bootstrap CI, and LoraHub's paired differences against ICL and
zero-shot have theirs: over all tasks, and over the tasks the oracle shows this model can learn
(oracle above max(base, majority) by >= 20 points).

    .venv/bin/python bench/bbh_table.py bench/results/bbh_250_a.json [more shards] \
        --floor bench/results/bbh_floor-*.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lorahub_serve.eval.headroom_report import bootstrap_ci, reading

METHODS = ("zero_shot", "icl", "lorahub", "best_single", "soup")
LEARNABLE_GAIN = 20.0
MIN_ROWS_FOR_CI = 3  # a bootstrap over one or two task-seeds has no width to read


def score(row: dict, method: str) -> float:
    """The row's score in its task's metric: RC where the task has options, else EM."""
    rc = row.get(f"{method}_rc")
    return float(row[method] if rc is None else rc)


def _ci(values) -> str:
    mean, lo, hi = bootstrap_ci(np.asarray(values, dtype=float))
    return f"{mean:.1f} [{lo:.1f}, {hi:.1f}]"


def _paired(rows, a: str, b: str) -> tuple[str, str]:
    ci = bootstrap_ci(np.asarray([score(r, a) - score(r, b) for r in rows], dtype=float))
    return f"{ci[0]:+.1f} [{ci[1]:+.1f}, {ci[2]:+.1f}]", reading(ci)


def build(rows: list[dict], floor: dict[str, dict]) -> tuple[str, dict]:
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    missing = [t for t in tasks if t not in floor]
    if missing:
        raise SystemExit(f"no oracle row for {missing}: run bench/bbh_floor.py --tasks {' '.join(missing)}")
    lines = ["| task | metric | seeds | eval n | chance | majority | oracle | " + " | ".join(METHODS) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(METHODS)]
    for t in tasks:
        rs, f = [r for r in rows if r["task"] == t], floor[t]
        cells = " | ".join(f"{np.mean([score(r, m) for r in rs]):.1f}" for m in METHODS)
        mark = " (learnable)" if f["gain"] >= LEARNABLE_GAIN else ""
        lines.append(f"| {t}{mark} | {f['metric']} | {len(rs)} | {rs[0].get('n_rc') or rs[0]['n_eval']} | "
                     f"{f['chance']:.1f} | {f['majority']:.1f} | {f['oracle']:.1f} | {cells} |")
    oracle_rows = [floor[r["task"]]["oracle"] for r in rows]
    lines.append(f"| **mean over {len(rows)} task-seeds [95 % CI]** | | | | "
                 f"{np.mean([floor[r['task']]['chance'] for r in rows]):.1f} | "
                 f"{np.mean([floor[r['task']]['majority'] for r in rows]):.1f} | {_ci(oracle_rows)} | "
                 + " | ".join(_ci([score(r, m) for r in rows]) for m in METHODS) + " |")
    learnable = [r for r in rows if floor[r["task"]]["gain"] >= LEARNABLE_GAIN]
    figures: dict = {"tasks": tasks, "task_seeds": len(rows),
                     "learnable_tasks": sorted({r["task"] for r in learnable})}
    lines += ["", "| paired difference | rows | mean [95 % CI] | reading |", "|---|---|---|---|"]
    for label, subset in (("all tasks", rows), ("learnable tasks", learnable)):
        if not subset:
            continue
        for other in ("icl", "zero_shot"):
            if len(subset) < MIN_ROWS_FOR_CI:
                lines.append(f"| LoraHub - {other}, {label} | {len(subset)} | "
                             f"{np.mean([score(r, 'lorahub') - score(r, other) for r in subset]):+.1f} | "
                             f"too few task-seeds for a CI |")
                continue
            diff, read = _paired(subset, "lorahub", other)
            lines.append(f"| LoraHub - {other}, {label} | {len(subset)} | {diff} | {read} |")
            figures[f"lorahub - {other}, {label}"] = bootstrap_ci(
                np.asarray([score(r, "lorahub") - score(r, other) for r in subset], dtype=float))
    figures["means"] = {m: bootstrap_ci(np.asarray([score(r, m) for r in rows], dtype=float)) for m in METHODS}
    return "\n".join(lines), figures


def main() -> None:
    from _meta import write_result

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="+", help="eval --suite bbh reports (JSON); shards are joined")
    ap.add_argument("--floor", required=True, help="bbh_floor.py's result (JSON)")
    ap.add_argument("--name", default="bbh_table")
    a = ap.parse_args()
    rows, commands = [], []
    for p in a.reports:
        d = json.loads(Path(p).read_text())
        rows += d["rows"]
        commands.append(d["command"])
    seen = {(r["task"], r["seed"]) for r in rows}
    if len(seen) != len(rows):
        raise SystemExit("the reports repeat a task-seed; pass each shard once")
    floor = {r["task"]: r for r in json.loads(Path(a.floor).read_text())["figures"]["rows"]}
    table, figures = build(rows, floor)
    md = (f"BBH with its floor: {len(rows)} task-seeds. The evaluation set of each task is fixed across seeds "
          f"and methods (the first min(250, half) of its seed-0 shuffle); the seeds draw the 5 shots. "
          f"Scores are rank classification (object_counting: exact match), means over seeds; the oracle "
          f"comes from `{a.floor}` (scored once: it does not depend on the shots).\n\n{table}\n\n"
          + "Runs: " + " ; ".join(f"`{c}`" for c in commands))
    figures["reports"], figures["floor"] = a.reports, a.floor
    print(md)
    for p in write_result(a.name, figures, md):
        print("wrote", p)


if __name__ == "__main__":
    main()
