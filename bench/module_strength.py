"""module_strength: do longer-trained modules help (issue 19)? The same tasks trained at two
schedules (`hub build --steps 24` and `--steps 128`, same lr, bf16 autocast), compared per module
on the held-out split each module never trained on: loss, accuracy (EM or rank classification, as
recorded in hub.json) and CPU seconds. With `--headroom A.json B.json`, also the headroom-suite
rows of LoraHub searching each hub (`eval --suite headroom --hub hubs/strength-N --modules 8`),
paired by task and seed.

    .venv/bin/python bench/module_strength.py --short hubs/strength-24 --long hubs/strength-128 \
        [--headroom bench/results/strength_24.json bench/results/strength_128.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lorahub_serve.eval.headroom_report import bootstrap_ci, reading
from lorahub_serve.formats import read_hub_json


def _modules(hub: Path) -> dict[str, dict]:
    manifest = read_hub_json(hub)
    if manifest is None:
        raise SystemExit(f"{hub}/hub.json not found: build it with `lorahub-serve hub build --out {hub}`")
    return {m["source_task"]: m for m in manifest["modules"]}


def _ci(values) -> str:
    mean, lo, hi = bootstrap_ci(np.asarray(values, dtype=float))
    return f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]" if abs(mean) < 10 else f"{mean:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def module_table(short: dict, long: dict, s_steps: int, l_steps: int) -> tuple[str, dict]:
    tasks = sorted(set(short) & set(long))
    if not tasks:
        raise SystemExit("the two hubs share no task")
    rows = [(t, short[t], long[t]) for t in tasks]
    lines = [(f"| task | metric | held-out n | loss @{s_steps} | loss @{l_steps} | acc @{s_steps} | "
             f"acc @{l_steps} | s @{s_steps} | s @{l_steps} |"), "|---|---|---|---|---|---|---|---|---|"]
    for t, a, b in rows:
        lines.append(f"| {t} | {a['heldout_metric']} | {a['heldout_examples']} | {a['heldout_loss']:.3f} | "
                     f"{b['heldout_loss']:.3f} | {a['heldout_accuracy']:.1f} | {b['heldout_accuracy']:.1f} | "
                     f"{a['seconds']:.0f} | {b['seconds']:.0f} |")
    d_loss = [b["heldout_loss"] - a["heldout_loss"] for _, a, b in rows]
    d_acc = [b["heldout_accuracy"] - a["heldout_accuracy"] for _, a, b in rows]
    cost = [b["seconds"] / a["seconds"] for _, a, b in rows]
    figures = {
        "tasks": tasks, "short_steps": s_steps, "long_steps": l_steps,
        "mean_heldout_loss": [float(np.mean([a["heldout_loss"] for _, a, _ in rows])),
                              float(np.mean([b["heldout_loss"] for _, _, b in rows]))],
        "mean_heldout_accuracy": [float(np.mean([a["heldout_accuracy"] for _, a, _ in rows])),
                                  float(np.mean([b["heldout_accuracy"] for _, _, b in rows]))],
        "paired_loss_change": bootstrap_ci(np.asarray(d_loss)), "paired_accuracy_change": bootstrap_ci(np.asarray(d_acc)),
        "cost_ratio_median": float(np.median(cost)),
        "seconds": [float(sum(a["seconds"] for _, a, _ in rows)), float(sum(b["seconds"] for _, _, b in rows))],
        "modules": {t: {"short": a, "long": b} for t, a, b in rows},
    }
    lines += ["", (f"Mean held-out accuracy {figures['mean_heldout_accuracy'][0]:.1f} → "
              f"{figures['mean_heldout_accuracy'][1]:.1f} %; paired change (long − short, 95 % bootstrap CI "
              f"over the {len(rows)} modules): accuracy {_ci(d_acc)} points, loss {_ci(d_loss)}. Training "
              f"cost {figures['seconds'][0]:.0f} s → {figures['seconds'][1]:.0f} s of one core "
              f"({figures['cost_ratio_median']:.1f}x per module, median).")]
    return "\n".join(lines), figures


def headroom_table(short_rows: list[dict], long_rows: list[dict], s_steps: int, l_steps: int) -> tuple[str, dict]:
    """LoraHub (and zero-shot) on the headroom suite with each hub, paired by (task, seed)."""
    key = {(r["task"], r["seed"]): r for r in long_rows}
    pairs = [(a, key[(a["task"], a["seed"])]) for a in short_rows if (a["task"], a["seed"]) in key]
    if not pairs:
        return "No headroom rows shared by the two runs.", {}
    d = [b["lorahub"] - a["lorahub"] for a, b in pairs]
    figures = {"pairs": len(pairs), "lorahub_short": bootstrap_ci(np.asarray([a["lorahub"] for a, _ in pairs])),
               "lorahub_long": bootstrap_ci(np.asarray([b["lorahub"] for _, b in pairs])),
               "zero_shot": bootstrap_ci(np.asarray([a["zero_shot"] for a, _ in pairs])),
               "paired_change": bootstrap_ci(np.asarray(d))}
    md = (f"| task-seeds | zero-shot | LoraHub, {s_steps}-step hub | LoraHub, {l_steps}-step hub | "
          f"paired change | reading |\n|---|---|---|---|---|---|\n| {len(pairs)} | "
          + " | ".join("{:.1f} [{:.1f}, {:.1f}]".format(*figures[k]) for k in ("zero_shot", "lorahub_short", "lorahub_long"))
          + f" | {_ci(d)} | {reading(figures['paired_change'])} |\n")
    return md, figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", type=Path, default=Path("hubs/strength-24"))
    ap.add_argument("--long", type=Path, default=Path("hubs/strength-128"))
    ap.add_argument("--headroom", nargs=2, type=Path, default=None, metavar=("SHORT.json", "LONG.json"),
                    help="headroom eval reports of LoraHub on each hub (eval --suite headroom --name ...)")
    args = ap.parse_args()
    short, long = _modules(args.short), _modules(args.long)
    s_steps = next(iter(short.values()))["steps"]
    l_steps = next(iter(long.values()))["steps"]
    md, figures = module_table(short, long, s_steps, l_steps)
    md = (f"The same {len(figures['tasks'])} tasks trained at {s_steps} and at {l_steps} steps "
          f"(`{args.short}`, `{args.long}`), each scored on its own held-out split (examples it never "
          f"trained on).\n\n" + md)
    if args.headroom:
        rows = [json.loads(p.read_text())["rows"] for p in args.headroom]
        hmd, hfig = headroom_table(rows[0], rows[1], s_steps, l_steps)
        figures["headroom"] = hfig
        md += "\n\n### LoraHub on the headroom suite with each hub (K = 8, the same tasks, seeds and shots)\n\n" + hmd
    from _meta import write_result

    paths = write_result("module_strength", figures, md)
    print(md)
    print(paths)


if __name__ == "__main__":
    main()
