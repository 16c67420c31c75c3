"""bbh_ablation: which change moved the BBH numbers, from the committed reports (no model runs).

Compares, on the tasks both reports share:
- before: bench/results/bbh_smollm2-20261125-letters.json (every multiple-choice task answered by
  letter, nevergrad's bounded CMA with population 12 from w = 0, strict exact match, the
  40-module letter-format hub);
- after: bench/results/bbh_smollm2.json (BBH answer formats, the 48-module hub, the one-hot start
  + CMA σ 0.1 search, one answer extractor), which also keeps each answer's strict exact match,
  so the scoring change is measured on the very same answers;
- within "after": best single module (the search's start batch alone) against LoraHub (start +
  CMA), the search's part in accuracy; and the few-shot objective against NGOpt's;
- the option term: bench/results/bbh_contrast.json (`lorahub-serve eval ... --contrast 1`) against
  the same task-seeds of the table.

    .venv/bin/python bench/bbh_ablation.py
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _meta import RESULTS, write_result

METHODS = ("zero_shot", "icl", "lorahub", "lorahub_ngopt", "best_single")
NAMES = {"zero_shot": "zero-shot", "icl": "5-shot ICL", "lorahub": "LoraHub", "lorahub_ngopt": "LoraHub (NGOpt)",
         "best_single": "best single"}


def mean_over(rows: list[dict], key: str, tasks: list[str]) -> float | None:
    """Mean over tasks of the per-task mean over seeds (as the report tables average)."""
    per_task = []
    for t in tasks:
        vals = [r[key] for r in rows if r["task"] == t and r.get(key) is not None]
        if vals:
            per_task.append(statistics.mean(vals))
    return round(statistics.mean(per_task), 1) if per_task else None


def moved_by(figures: dict, steps: list) -> list[str]:
    """LoraHub's EM, change by change (points, mean over the shared tasks)."""
    before, strict, em = (figures[s[0]] for s in steps[:3])

    def d(a, b):
        return "-" if a is None or b is None else f"{b - a:+.1f}"

    rows = [
        ("answer formats + 48-module word/letter/free-text hub + one-hot start & CMA σ 0.1",
         d(before["lorahub"], strict["lorahub"]),
         ("before vs after, both scored strictly (format and hub changed together: the hub was "
          "retrained in the new formats)")),
        ("fair scoring (one answer extractor)", d(strict["lorahub"], em["lorahub"]),
         "the same answers, strict EM vs the extractor"),
        ("the search's CMA phase", d(em["best_single"], em["lorahub"]),
         "best single module (the start batch alone) vs LoraHub, same run"),
        ("default search instead of the reference's NGOpt", d(em["lorahub_ngopt"], em["lorahub"]),
         "same hub, shots and modules, equal budget"),
        ("zero-shot, new formats and scoring (not LoraHub)", d(before["zero_shot"], em["zero_shot"]),
         "the format change alone lifts the base model"),
    ]
    return ["| change | LoraHub EM moves by (points) | how it is measured |", "|---|---|---|",
            *(f"| {a} | {b} | {c} |" for a, b, c in rows)]


def option_term(after: list[dict], figures: dict) -> list[str]:
    """The option term (`--contrast 1`) against the default objective, on the task-seeds that
    bbh_contrast.json shares with the table (same shots, evaluation set and modules)."""
    path = RESULTS / "bbh_contrast.json"
    if not path.exists():
        return []
    runs = json.loads(path.read_text())["rows"]
    base = {(r["task"], r["seed"]): r for r in after}
    shared = [(r, base[(r["task"], r["seed"])]) for r in runs if (r["task"], r["seed"]) in base]
    tasks = list(dict.fromkeys(r["task"] for r, _ in shared))
    out = ["", ("Option term (`--contrast 1`: the search also scores the wrong options) against the "
               f"default objective, {len(shared)} task-seeds ({', '.join(tasks)}):"), "",
           "| task | seeds | default EM | option term EM | default RC | option term RC |",
           "|---|---|---|---|---|---|"]
    moved = {}
    for t in tasks:
        pairs = [(r, b) for r, b in shared if r["task"] == t]
        em = [statistics.mean(x["lorahub"] for x in col) for col in zip(*pairs)][::-1]
        rc = [statistics.mean(x["lorahub_rc"] for x in col if x.get("lorahub_rc") is not None)
              for col in zip(*pairs)][::-1]
        moved[t] = {"default_em": em[0], "contrast_em": em[1], "default_rc": rc[0], "contrast_rc": rc[1]}
        out.append(f"| {t} | {len(pairs)} | {em[0]:.1f} | {em[1]:.1f} | {rc[0]:.1f} | {rc[1]:.1f} |")
    mean = {k: statistics.mean(v[k] for v in moved.values()) for k in next(iter(moved.values()))}
    out.append(f"| **mean** | | {mean['default_em']:.1f} | {mean['contrast_em']:.1f} | "
               f"{mean['default_rc']:.1f} | {mean['contrast_rc']:.1f} |")
    figures["option_term"] = {"per_task": moved, "mean": mean}
    return out


def main() -> None:
    before = json.loads((RESULTS / "bbh_smollm2-20261125-letters.json").read_text())["rows"]
    after = json.loads((RESULTS / "bbh_smollm2.json").read_text())["rows"]
    tasks = [t for t in dict.fromkeys(r["task"] for r in after) if any(b["task"] == t for b in before)]
    lines = [f"Tasks in both reports: {', '.join(tasks)} (means over seeds, then over tasks).", "",
             "| configuration | " + " | ".join(NAMES[m] for m in METHODS) + " |", "|---|" + "---|" * len(METHODS)]
    steps = [("before: letters, bounded CMA pop 12 from 0, 40-module letter hub, strict EM", before, ""),
             ("after, scored strictly: BBH formats, 48-module hub, one-hot start + CMA σ 0.1", after, "_strict"),
             ("after, one extractor (EM)", after, ""),
             ("after, rank classification (RC)", after, "_rc")]
    figures = {}
    for label, rows, suffix in steps:
        vals = {m: mean_over(rows, m + suffix, tasks) for m in METHODS}
        figures[label] = vals
        lines.append(f"| {label} | " + " | ".join("-" if v is None else str(v) for v in vals.values()) + " |")
    pairs = [(r["lorahub_objective"], r["ngopt_objective"]) for r in after
             if r.get("lorahub_objective") is not None and r.get("ngopt_objective") is not None]
    wins = sum(a <= b + 1e-6 for a, b in pairs)
    figures["objective_le_ngopt"] = [wins, len(pairs)]
    objective = (f"Search, few-shot objective (loss + L1): the default reaches NGOpt's or lower on {wins} of "
                 f"{len(pairs)} task-seeds; mean {statistics.mean(a for a, _ in pairs):.3f} against "
                 f"{statistics.mean(b for _, b in pairs):.3f}.")
    accuracy = ("Search, accuracy: 'best single' is the start batch alone, 'LoraHub' adds the CMA phase "
                "(same run, same shots, same modules).")
    lines += ["", objective, accuracy]
    lines += ["", *moved_by(figures, steps)]
    lines += option_term(after, figures)
    print("\n".join(lines))
    print(*write_result("bbh_ablation", figures, "\n".join(lines)))


if __name__ == "__main__":
    main()
