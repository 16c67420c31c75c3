"""The BBH evaluation's report: per-task summary, markdown table, plot, JSON (see `evaluation`).

Every method has two columns: EM (exact match of the greedy answer) and RC (rank
classification). The table also counts the task-seeds on which the default search's few-shot
objective is at most NGOpt's.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

from lorahub_serve.data import tasks as task_data
from lorahub_serve.eval.run import METHODS, rc_key
from lorahub_serve.run_metadata import metadata

LABELS = {"zero_shot": "zero-shot", "icl": "ICL", "lorahub": "LoraHub", "lorahub_ngopt": "LoraHub (NGOpt)",
          "best_single": "best single", "soup": "soup"}
# Objectives within this of each other count as equal (batched losses differ by float noise).
OBJECTIVE_TOL = 1e-6


def _mean(vals: list) -> float | None:
    vals = [v for v in vals if v is not None]
    return round(statistics.mean(vals), 1) if vals else None


def objective_counts(rows: list[dict]) -> tuple[int, int]:
    """(task-seeds where the default search's objective <= NGOpt's, task-seeds with both)."""
    pairs = [(r.get("lorahub_objective"), r.get("ngopt_objective")) for r in rows]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    return sum(a <= b + OBJECTIVE_TOL for a, b in pairs), len(pairs)


def summarise(rows: list[dict]) -> list[dict]:
    """One line per task: chance, EM and RC means over seeds per method, LoraHub's best seed (EM),
    the objective comparison with NGOpt, token counts."""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        rs = [r for r in rows if r["task"] == task]
        line = {"task": task, "chance": round(100 * task_data.task_info(task).chance, 1), "seeds": len(rs)}
        for m in METHODS:
            line[m] = _mean([r.get(m) for r in rs])
            line[rc_key(m)] = _mean([r.get(rc_key(m)) for r in rs])
        em = [r["lorahub"] for r in rs if r.get("lorahub") is not None]  # none with --metrics task on RC tasks
        line["lorahub_best"] = max(em) if em else None
        line["objective_le_ngopt"], line["objective_pairs"] = objective_counts(rs)
        line["n_eval"], line["n_rc"] = rs[0].get("n_eval"), rs[0].get("n_rc", rs[0].get("n_eval"))
        line["input_tokens"] = rs[0]["input_tokens"]
        line["input_tokens_icl"] = round(statistics.mean(r["input_tokens_icl"] for r in rs), 1)
        out.append(line)
    return out


def _columns() -> list[tuple[str, str]]:
    """(summary key, header) of each table column."""
    cols = [("task", "task"), ("chance", "chance")]
    for m in METHODS:
        cols += [(m, f"{LABELS[m]} EM"), (rc_key(m), f"{LABELS[m]} RC")]
        if m == "lorahub":
            cols.append(("lorahub_best", "LoraHub best seed EM"))
    return cols + [("input_tokens", "tokens/ex"), ("input_tokens_icl", "tokens/ex ICL")]


def markdown_table(summary: list[dict]) -> str:
    """The table (one row per task, an average row) and the objective count under it."""
    keys, head = zip(*_columns())
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        lines.append("| " + " | ".join("-" if s.get(c) is None else str(s[c]) for c in keys) + " |")
    avg = {c: _mean([s.get(c) for s in summary]) for c in keys[1:]}
    lines.append("| **average** | " + " | ".join("-" if avg[c] is None else str(avg[c]) for c in keys[1:]) + " |")
    sizes = sorted({(s.get("n_eval"), s.get("n_rc")) for s in summary})
    lines.append("\nEvaluation examples per task (EM, RC): " + ", ".join(f"{a}, {b}" for a, b in sizes) + ".")
    n_le = sum(s.get("objective_le_ngopt", 0) for s in summary)
    n = sum(s.get("objective_pairs", 0) for s in summary)
    if n:
        lines.append(f"\nDefault search objective <= NGOpt's on {n_le} of {n} task-seeds "
                     f"(few-shot loss + L1, equal within {OBJECTIVE_TOL:g}).")
    return "\n".join(lines)


def plot(summary: list[dict], path: Path) -> None:
    """Bars per task and method: EM, and RC in a second panel when any task has options."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("exact match (%)", list(METHODS))]
    if any(s.get(rc_key(m)) is not None for s in summary for m in METHODS):
        panels.append(("rank classification (%)", [rc_key(m) for m in METHODS]))
    x = np.arange(len(summary))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, 1.2 * len(summary)), 4.5 * len(panels)),
                             squeeze=False)
    for ax, (ylabel, keys) in zip(axes[:, 0], panels):
        keys = [k for k in keys if any(s.get(k) is not None for s in summary)]
        width = 0.8 / max(len(keys), 1)
        for i, k in enumerate(keys):
            ax.bar(x + i * width, [s.get(k) or 0 for s in summary], width, label=LABELS[k.removesuffix("_rc")])
        ax.scatter(x + 0.4 - width / 2, [s["chance"] for s in summary], marker="_", s=400, c="k", label="chance")
        ax.set_xticks(x + 0.4 - width / 2, [s["task"].replace("/", "\n") for s in summary], fontsize=7)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(rows: list[dict], out_dir: Path, name: str, command: str) -> dict[str, Path]:
    """`name`.json (rows, summary, metadata), `name`.md (table) and `name`.png in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = metadata()
    summary = summarise(rows)
    paths = {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md", "png": out_dir / f"{name}.png"}
    paths["json"].write_text(json.dumps({"command": command, "meta": meta, "rows": rows,
                                         "summary": summary}, indent=2))
    plot(summary, paths["png"])
    header = "\n".join(f"- {k}: {v}" for k, v in meta.items())
    paths["md"].write_text(f"# {name}\n\nCommand: `{command}`\n\n{header}\n\n{markdown_table(summary)}\n")
    return paths
