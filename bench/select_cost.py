"""select_cost: what `--select loss` costs a whole `adapt` against `--select random`, at N = K.

With K >= N every module is taken whatever the mode, so `loss` must run no selection pass and
cost what `random` costs (issue 35: it took 30.6 s against 22.6 s before the fix, 9.1 s of it
selection). Each run is a fresh `lorahub-serve adapt` process (imports, model load, selection,
search, export); the two modes alternate `--repeats` times on the same examples, and each run's
lorahub.json gives its selection and search seconds apart.

    .venv/bin/python bench/select_cost.py [--model smollm2-135m] [--hub hubs/smollm2-135m] \
        [--modules 20] [--budget 40] [--dtype float32] [--threads 1] [--repeats 3]

The hub is cut to its first `--modules` modules (N = K), in a temporary folder of links. The
examples come from the project's task interface (default: a reasoning-gym task, generated offline).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODES = ("loss", "random")


def _write_examples(task: str, shots: int, seed: int, path: Path) -> Path:
    """The task's `shots` few-shot examples (the project's task interface), as JSONL."""
    from lorahub_serve.data import tasks

    examples = tasks.split(tasks.load_task(task), shots, 50, seed)[0]
    path.write_text("".join(json.dumps({"input": e.input, "output": e.output}) + "\n" for e in examples))
    return path


def _sub_hub(hub: Path, n: int, out: Path) -> Path:
    """A hub of `hub`'s first `n` modules: hub.json cut to them, module folders linked."""
    manifest = json.loads((hub / "hub.json").read_text())
    manifest["modules"] = manifest["modules"][:n]
    (out / "modules").mkdir(parents=True)
    for m in manifest["modules"]:
        (out / m["path"]).symlink_to((hub / m["path"]).resolve(), target_is_directory=True)
    (out / "hub.json").write_text(json.dumps(manifest, indent=1))
    return out


def _adapt(args, mode: str, hub: Path, examples: Path, out: Path) -> dict:
    """One fresh `lorahub-serve adapt --select MODE` process: wall time and its lorahub.json."""
    cmd = [sys.executable, "-m", "lorahub_serve.cli", "adapt", "--model", args.model, "--hub", str(hub),
           "--examples", str(examples), "--out", str(out), "--budget", str(args.budget),
           "--seed", str(args.seed), "--modules", str(args.modules), "--dtype", args.dtype,
           "--select", mode]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    meta = json.loads((out / "lorahub.json").read_text())
    return {"process_s": wall, "adapt_s": meta["seconds"], "select_s": meta["select_seconds"],
            "search_s": meta["search_seconds"], "evaluations": meta["evaluations"],
            "select_evaluations": meta["select_evaluations"], "best_loss": meta["best_loss"],
            "modules": [m["name"] for m in meta["modules"]]}


def _median(vals: list[float]) -> float:
    import statistics

    return statistics.median(vals)


def _markdown(args, runs: dict, loads: dict, ratios: list[float]) -> str:
    rows = [("whole process s", "process_s"), ("adapt s (selection + search)", "adapt_s"),
            ("selection s", "select_s"), ("search s", "search_s"), ("modules scored alone to choose", "select_evaluations")]
    lines = [(f"N = K = {args.modules} (the first {args.modules} modules of `{args.hub}`), budget {args.budget}, "
             f"`--dtype {args.dtype}`, {args.threads} torch thread(s), task `{args.task}` ({args.shots} shots, seed "
             f"{args.seed}); median of {args.repeats} alternating run(s), range in brackets. Load average "
             f"(1/5/15 min) before: {loads['before']}; after: {loads['after']}, on {os.cpu_count()} cores "
             "(the load average lags: read the 1-minute figure after the run; above ~1 other jobs shared "
             "the CPU)."), "",
             "| measure | `--select loss` | `--select random` |", "|---|---|---|"]
    for label, key in rows:
        cells = []
        for mode in MODES:
            vals = [r[key] for r in runs[mode]]
            cells.append(f"{_median(vals):.2f} ({min(vals):.2f}–{max(vals):.2f})")
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    same = all(a["modules"] == b["modules"] and a["best_loss"] == b["best_loss"]
               for a, b in zip(runs["loss"], runs["random"]))
    lines += ["", (f"Whole process, loss / random: **{_median(ratios):.3f}x** ({min(ratios):.3f}–{max(ratios):.3f}), "
              f"each ratio within one alternation (target: within 1.10x). Same modules and best loss in "
              f"both modes: {same}.")]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--hub", type=Path, default=Path("hubs/smollm2-135m"))
    p.add_argument("--modules", type=int, default=20, help="N = K: the hub is cut to this many")
    p.add_argument("--task", default="rg/basic_arithmetic")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--budget", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    from _meta import write_result

    loads = {"before": Path("/proc/loadavg").read_text().split()[:3]}
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    ratios = []
    with tempfile.TemporaryDirectory(prefix="select-cost-") as tmp:
        work = Path(tmp)
        examples = _write_examples(args.task, args.shots, args.seed, work / "examples.jsonl")
        hub = _sub_hub(args.hub.resolve(), args.modules, work / "hub")
        for rep in range(args.repeats):
            order = MODES if rep % 2 == 0 else MODES[::-1]  # neither mode always runs first
            for mode in order:
                runs[mode].append(_adapt(args, mode, hub, examples, work / "store" / f"{mode}-{rep}"))
                print(mode, rep, {k: v for k, v in runs[mode][-1].items() if k != "modules"}, flush=True)
            ratios.append(runs["loss"][-1]["process_s"] / runs["random"][-1]["process_s"])
    loads["after"] = Path("/proc/loadavg").read_text().split()[:3]
    figures = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
               "loss_over_random_process": ratios, "loadavg": loads,
               "note": "2-core machine shared with other jobs (hub training, other sessions' tests): see loadavg"}
    md = _markdown(args, runs, loads, ratios)
    print(md)
    print(*write_result("select_cost", figures, md), sep="\n")


if __name__ == "__main__":
    main()
