"""headroom_dtype_check: do the headroom suite's hub-independent scores move between two reports run
in different engine dtypes (fp32 before `--dtype auto` picked bf16 here, bf16 after)?

zero_shot and icl run on the engine and do not depend on the hub; the evaluation set and a seed's
shots are the same in every run. So on the task-seeds both reports hold, the paired difference
(report B - report A) of each is the dtype's effect alone, with a 95 % bootstrap CI. lora_ft
trains in bf16 in both runs and the oracle is scored in fp32 in both: they are listed as controls.
LoraHub's rows are left out when the two reports used different hubs.

The same paired check measures a lever between two runs that differ in one setting (e.g.
`eval --select retrieve` against the default `loss`): `--methods lorahub,zero_shot,oracle --name
headroom_select_retrieve`. zero_shot and oracle do not depend on the lever, so their differences
are the run-to-run noise (bf16 greedy answers flip by 1-2 points when a batch changes shape).

    .venv/bin/python bench/headroom_dtype_check.py A.json [A2.json ...] --vs B.json [B2.json ...] \
        [--methods zero_shot,icl,lora_ft,oracle] [--name headroom_dtype_check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

METHODS = ("zero_shot", "icl", "lora_ft", "oracle")


def _rows(paths: list[str]) -> dict[tuple, dict]:
    from lorahub_serve.eval.headroom_report import merge_rows

    shards = [json.loads(Path(p).read_text())["rows"] for p in paths]
    return {(r["task"], r["seed"]): r for r in merge_rows(shards)}


def main() -> None:
    from _meta import write_result

    from lorahub_serve.eval.headroom_report import bootstrap_ci, reading

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", nargs="+", help="report(s) A (e.g. the fp32 run)")
    ap.add_argument("--vs", nargs="+", required=True, help="report(s) B (e.g. the bf16 run)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma list of the scores to pair")
    ap.add_argument("--name", default="headroom_dtype_check", help="result name in bench/results")
    args = ap.parse_args()
    a, b = _rows(args.a), _rows(args.vs)
    shared = sorted(set(a) & set(b))
    if not shared:
        raise SystemExit("the reports share no task-seed")
    dtype = {name: sorted({r.get("dtype", "float32 (before the field)") for k, r in rows.items() if k in shared})
             for name, rows in (("A", a), ("B", b))}
    select = {name: sorted({str(r.get("select")) for k, r in rows.items() if k in shared})
              for name, rows in (("A", a), ("B", b))}
    figures = {"task_seeds": len(shared), "dtype": dtype, "select": select, "methods": {},
               "a": args.a, "b": args.vs}
    lines = [(f"{len(shared)} task-seeds in both reports; engine dtype A: {', '.join(dtype['A'])}, "
             f"B: {', '.join(dtype['B'])}; module selection A: {', '.join(select['A'])}, "
             f"B: {', '.join(select['B'])}. Same evaluation sets, same shots."), "",
             "| method | A mean | B mean | B - A, mean [95 % CI] | reading |", "|---|---|---|---|---|"]
    for m in args.methods.split(","):
        keys = [k for k in shared if a[k].get(m) is not None and b[k].get(m) is not None]
        if not keys:
            continue
        mean, lo, hi = ci = bootstrap_ci([b[k][m] - a[k][m] for k in keys])
        ma = sum(a[k][m] for k in keys) / len(keys)
        mb = sum(b[k][m] for k in keys) / len(keys)
        figures["methods"][m] = {"n": len(keys), "a": ma, "b": mb, "diff": [mean, lo, hi]}
        lines.append(f"| {m} | {ma:.1f} | {mb:.1f} | {mean:+.1f} [{lo:+.1f}, {hi:+.1f}] | {reading(ci)} |")
    md = "\n".join(lines) + "\n"
    print(md)
    print("written:", *write_result(args.name, figures, md))


if __name__ == "__main__":
    main()
