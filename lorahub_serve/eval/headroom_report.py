"""The headroom suite's report: means with 95 % CIs, paired differences, share of the gap closed.

Rows are (task, seed) pairs (`eval.headroom`). A cell is the mean over rows, with a 95 %
bootstrap CI that resamples rows (10,000 draws, seeded). A paired difference resamples the same
rows for both methods, so per-task difficulty cancels. "Gap closed" is (method - zero-shot) /
(oracle - zero-shot) per row, averaged. A difference whose CI holds 0 is no difference.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lorahub_serve.eval.headroom import LEVERS, METHODS, SHOT_PROMPT_METHODS

LABELS = ("config-shift", "near", "far")  # distance from the hub (eval.suite.closeness)

N_BOOT = 10_000


def bootstrap_ci(values: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` and its 95 % percentile-bootstrap interval."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("a confidence interval needs at least one value")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def binomial_ci(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson interval, in percent, of an accuracy of `hits` out of `n` examples."""
    if n < 1:
        raise ValueError("an accuracy interval needs at least one example")
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


def reading(ci) -> str:
    """How a difference's (mean, low, high) reads: a CI that holds 0 is no difference."""
    _, lo, hi = ci
    return "no difference" if lo <= 0 <= hi else ("higher" if lo > 0 else "lower")


def merge_rows(shards: list[list[dict]]) -> list[dict]:
    """The rows of several reports as one: a (task, seed) in more than one must agree on every
    hub-independent score (same evaluation set, same shots), else the shards are not one run."""
    merged: dict[tuple, dict] = {}
    for rows in shards:
        for r in rows:
            key = (r["task"], r["seed"])
            if key in merged:
                for m in ("zero_shot", "icl", "oracle", "n_eval"):
                    if merged[key].get(m) != r.get(m):
                        raise ValueError(f"{key[0]} seed {key[1]}: the shards disagree on {m} "
                                         f"({merged[key].get(m)} against {r.get(m)}); not one run")
                continue
            merged[key] = r
    return list(merged.values())


def present(rows: list[dict]) -> list[str]:
    return [m for m in METHODS if all(r.get(m) is not None for r in rows)]


PAIRS = (("lorahub", "icl"), ("lorahub", "zero_shot"), ("lorahub", "lora_ft"),
         ("lorahub", "lorahub_random"), ("lorahub", "best_single"), ("lorahub", "lorahub_ngopt"),
         ("lorahub", "arrow"), ("lorahub", "arrow_hub"),
         ("lorahub_icl", "icl"), ("lorahub_icl_tuned", "icl"), ("lorahub_icl_tuned", "lorahub_icl"),
         ("icl", "zero_shot"),
         # each lever against the same composition through the same (exported, PEFT) path, and ICL
         *((lever, "lorahub_export") for lever in LEVERS if lever != "lorahub_export"),
         *((lever, "icl") for lever in LEVERS if lever != "lorahub_export"),
         ("lorahub_export", "lorahub"))


def tokens_per_example(rows: list[dict], method: str) -> float | None:
    """Mean input tokens per evaluation example of `method`: the question alone, or with the
    shots for the methods that carry them in the prompt."""
    key = "input_tokens_icl" if method in SHOT_PROMPT_METHODS else "input_tokens"
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def adapt_seconds(rows: list[dict], methods: list[str]) -> dict[str, float]:
    """Mean adaptation seconds per task-seed of lorahub and of each lever (selection, search and
    refinement; not the scoring), where every row records them."""
    out = {}
    if rows and all("lorahub_seconds" in r for r in rows):
        out["lorahub"] = float(np.mean([r["lorahub_seconds"] for r in rows]))
    for m in methods:
        if m in LEVERS and all(m in r.get("levers", {}) for r in rows):
            out[m] = float(np.mean([r["levers"][m]["adapt_seconds"] for r in rows]))
    return out


def summarise(rows: list[dict], by_label: bool = True) -> dict:
    methods = present(rows)
    cells = {m: bootstrap_ci([r[m] for r in rows]) for m in methods}
    paired = {}
    for a, b in PAIRS:
        if a in methods and b in methods:
            paired[f"{a} - {b}"] = bootstrap_ci([r[a] - r[b] for r in rows])
    gap = {}
    usable = [r for r in rows if r["oracle"] - r["zero_shot"] > 0]
    for m in methods:
        if usable:
            gap[m] = float(np.mean([(r[m] - r["zero_shot"]) / (r["oracle"] - r["zero_shot"]) for r in usable]))
    summary = {"methods": methods, "cells": cells, "paired": paired, "gap_closed": gap,
               "adapt_seconds": adapt_seconds(rows, methods),
               "tokens": {m: tokens_per_example(rows, m) for m in methods},
               "native": {m: float(np.mean([r["native"][m] for r in rows])) for m in methods
                          if rows and all(m in r.get("native", {}) for r in rows)},
               "tasks": sorted({r["task"] for r in rows}), "seeds": sorted({r["seed"] for r in rows}),
               "rows": len(rows)}
    if by_label:  # every figure per distance label as well (labels no row has are left out)
        summary["by_label"] = {label: summarise([r for r in rows if r.get("closeness") == label], False)
                               for label in LABELS if any(r.get("closeness") == label for r in rows)}
    return summary


def _fmt(ci) -> str:
    mean, lo, hi = ci
    return f"{mean:.1f} [{lo:.1f}, {hi:.1f}]"


def _tables(summary: dict) -> list[str]:
    """The method table (mean, CI, gap closed, input tokens) and the paired differences."""
    native, secs = summary.get("native", {}), summary.get("adapt_seconds", {})
    lines = ["| method | mean [95 % CI] | gap closed | input tokens/ex |" + (" score_answer |" if native else "")
             + (" adapt s |" if secs else ""),
             "|---|---|---|---|" + ("---|" if native else "") + ("---|" if secs else "")]
    for m in summary["methods"]:
        g, tok = summary["gap_closed"].get(m), summary.get("tokens", {}).get(m)
        lines.append(f"| {m} | {_fmt(summary['cells'][m])} | {'' if g is None else f'{100 * g:.0f} %'} | "
                     f"{'' if tok is None else f'{tok:.0f}'} |"
                     + (f" {native[m]:.1f} |" if m in native else " |" if native else "")
                     + (f" {secs[m]:.1f} |" if m in secs else " |" if secs else ""))
    lines += ["", "| paired difference | mean [95 % CI] | reading |", "|---|---|---|"]
    for name, ci in summary["paired"].items():
        lines.append(f"| {name} | {_fmt(ci)} | {reading(ci)} |")
    return lines


NATIVE_NOTE = ("score_answer: the reasoning-gym generator's own score of the same answers (mean, %), "
               "beside exact match; it can give partial credit.")


def markdown(rows: list[dict], summary: dict) -> str:
    ms = summary["methods"]
    per_task = {t: sum(r["task"] == t for r in rows) for t in summary["tasks"]}
    full = sum(n == len(summary["seeds"]) for n in per_task.values())
    lines = [(f"{len(summary['tasks'])} tasks, {summary['rows']} task-seeds (seeds "
              f"{', '.join(map(str, summary['seeds']))}; {full} tasks have all of them). The evaluation "
              "set of each task is fixed across seeds and methods; the seeds draw the shots."),
             *([NATIVE_NOTE] if summary.get("native") else []), "", "All tasks:", "", *_tables(summary)]
    for label, sub in summary.get("by_label", {}).items():
        lines += ["", f"**{label}** ({len(sub['tasks'])} tasks, {sub['rows']} task-seeds):", "", *_tables(sub)]
    lines += ["", "Per task (mean over its seeds; their number in brackets):", "",
              "| task | distance | metric | chance | majority | " + " | ".join(ms) + " |",
              "|---|---|---|---|---|" + "---|" * len(ms)]
    for t in summary["tasks"]:
        tr = [r for r in rows if r["task"] == t]
        vals = " | ".join(f"{np.mean([r[m] for r in tr]):.0f}" for m in ms)
        lines.append(f"| {t} ({len(tr)}) | {tr[0]['closeness']} | {tr[0]['metric']} | {tr[0]['chance']:.0f} | "
                     f"{tr[0]['majority']:.0f} | {vals} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    """Mean accuracy with 95 % CIs per method: all tasks, then each distance label beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = summary["methods"]
    groups = {"all": summary} | summary.get("by_label", {})
    width = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(ms) * len(groups) / 2), 3.8))
    for g, (label, sub) in enumerate(groups.items()):
        have = [m for m in ms if m in sub["cells"]]
        x = np.array([ms.index(m) for m in have]) + (g - (len(groups) - 1) / 2) * width
        mean = np.array([sub["cells"][m][0] for m in have])
        err = np.array([[sub["cells"][m][0] - sub["cells"][m][1], sub["cells"][m][2] - sub["cells"][m][0]]
                        for m in have]).T
        ax.bar(x, mean, width, yerr=err, capsize=2, label=f"{label} ({len(sub['tasks'])} tasks)")
    ax.set_xticks(range(len(ms)), ms)
    ax.set_ylabel("accuracy (%), mean over task-seeds")
    ax.set_title(f"headroom suite: {len(summary['tasks'])} tasks x {len(summary['seeds'])} seeds, 95 % CI")
    ax.legend(fontsize=7)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(rows: list[dict], out_dir: Path, name: str, command: str) -> dict[str, Path]:
    from lorahub_serve.run_metadata import metadata

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows)
    paths = {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md", "png": out_dir / f"{name}.png"}
    meta = metadata() | {"command": command}
    paths["json"].write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))
    head = (f"# {name}\n\n`{command}`\n\n{meta.get('cpu', '')} ({meta.get('cpu_count')} CPUs, load "
            f"{meta.get('loadavg_1m', 0):.1f}) · {meta.get('date', '')} · commit {meta.get('commit', '')}\n\n")
    paths["md"].write_text(head + markdown(rows, summary))
    if summary["methods"]:
        plot(summary, paths["png"])
    return paths
