"""`lorahub-serve eval --suite bbh`: what composition buys on held-out Big-Bench Hard tasks.

Per task and seed, with the same few-shot examples for every method:
- zero-shot: the base model;
- ICL: the few-shot examples in the prompt;
- LoraHub: the search (population CMA-ES by default) over K hub modules, then greedy answers;
- best single module: the hub module with the lowest few-shot loss (one batched evaluation);
- NGOpt: the reference's sequential optimiser at the same budget.
Accuracy is exact match after the reference's normalisation, on the answer up to the first blank
line (the separator of the few-shot prompt; see `eval_generation.STOP`). The evaluation set is fixed per
task (split seed 0); the few-shot examples and the module selection change with the seed.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import bigbench
from .data.bbh import BBH_TASKS
from .engine.adapt import Engine
from .engine.search import SearchConfig
from .eval_generation import STOP  # the few-shot separator is also where answers end

METHODS = ("zero_shot", "icl", "lorahub", "lorahub_ngopt", "best_single")


@dataclass(frozen=True)
class EvalConfig:
    tasks: tuple[str, ...]
    seeds: tuple[int, ...] = (1, 2, 3)
    shots: int = 5
    limit: int = 50
    budget: int = 40
    modules: int | None = None  # K; default min(20, hub size)
    ngopt: bool = True

    def __post_init__(self):
        unknown = [t for t in self.tasks if t not in BBH_TASKS]
        if unknown:
            raise ValueError(f"not BBH tasks: {unknown}; choose from {', '.join(BBH_TASKS)}")


def accuracy(preds: list[str], golds: list[str]) -> float:
    norm = bigbench.normalize_answer
    return 100.0 * sum(norm(p) == norm(g) for p, g in zip(preds, golds)) / max(len(golds), 1)


def icl_prompt(shots, example) -> str:
    return STOP.join([*(f"{s.input}{s.output}" for s in shots), example.input])


def eval_task_seed(engine: Engine, generator, task: str, seed: int, cfg: EvalConfig, cache: dict) -> dict:
    exs = bigbench.load_task(task)
    shots, evalset = bigbench.split(exs, cfg.shots, cfg.limit, seed)
    golds = [e.output for e in evalset]
    max_new = max(len(engine.tokenizer(e.output)["input_ids"]) for e in shots) + 4
    k = cfg.modules or min(20, len(engine.hub_modules))
    key = f"{task}@{seed}"
    t0 = time.perf_counter()
    res = engine.adapt(shots, task=key, modules=k, config=SearchConfig(budget=cfg.budget, seed=seed),
                       progress=False)
    idx = engine.module_indices(k, seed)
    t_search = time.perf_counter() - t0
    t_ng = time.perf_counter()
    ng_res = (engine.adapt(shots, task=key, modules=k, progress=False,
                           config=SearchConfig(budget=cfg.budget, seed=seed, optimizer="ngopt"))
              if cfg.ngopt else None)
    t_ng = time.perf_counter() - t_ng
    # Best single module: one-hot candidates, scored in one batched evaluation.
    single_losses = engine.evaluator.losses([key] * k, np.tile(idx, (k, 1)), np.eye(k, dtype=np.float32))
    best_single = int(np.argmin(single_losses))
    comps = {"base": None, "lorahub": res.weights, "best_single": np.eye(k)[best_single]}
    if ng_res is not None:
        comps["lorahub_ngopt"] = ng_res.weights
    plain = [e.input for e in evalset]
    jobs = [(m, m, plain) for m in comps if m != "base"]
    if task not in cache:  # zero-shot: same evaluation set for every seed
        jobs.append(("zero_shot", "base", plain))
    jobs.append(("icl", "base", [icl_prompt(shots, e) for e in evalset]))
    t1, started = time.perf_counter(), generator.startup_seconds
    preds = generator.answers(f"{task.replace('/', '-')[:40]}-s{seed}", idx, comps, jobs, max_new)
    t_start = generator.startup_seconds - started  # a server started by this call
    t_generate = time.perf_counter() - t1 - t_start
    out = {m: accuracy(p, golds) for m, p in preds.items()}
    out["zero_shot"] = cache.setdefault(task, out.get("zero_shot"))
    n_tok = statistics.mean(len(engine.tokenizer(e.input)["input_ids"]) for e in evalset)
    n_tok_icl = statistics.mean(len(engine.tokenizer(icl_prompt(shots, e))["input_ids"]) for e in evalset)
    return {"task": task, "seed": seed, **out, "best_single_module": engine.hub_modules[idx[best_single]].name,
            "lorahub_loss": res.best_loss, "ngopt_loss": ng_res.best_loss if ng_res else None,
            "optimizer": res.optimizer, "ngopt_optimizer": ng_res.optimizer if ng_res else None,
            "modules": [engine.hub_modules[i].name for i in idx],
            "lorahub_weights": [round(float(w), 5) for w in res.weights],
            "ngopt_weights": [round(float(w), 5) for w in ng_res.weights] if ng_res else None,
            "generator": generator.name, "examples": [{"gold": g, **{m: p[i] for m, p in preds.items()}}
                                                      for i, g in enumerate(golds[:5])],
            "search_seconds": round(t_search, 1), "generate_seconds": round(t_generate, 1),
            "ngopt_seconds": round(t_ng, 1), "server_start_seconds": round(t_start, 1),
            "total_seconds": round(time.perf_counter() - t0, 1), "evals_per_second": round(res.evals_per_second, 2),
            "input_tokens": round(n_tok, 1), "input_tokens_icl": round(n_tok_icl, 1),
            "n_eval": len(evalset)}


def run_eval(model: str, hub: str, cfg: EvalConfig, progress: bool = True, on_row=None,
             generator: str = "auto", log_dir: Path | None = None) -> list[dict]:
    """All (task, seed) rows; `on_row(rows)` after each one (the CLI rewrites its report then, so
    a long run that is stopped keeps what it measured). `generator`: see `eval_generation`."""
    from tqdm.auto import tqdm

    from .eval_generation import choose_generator

    engine = Engine(model, hub)
    gen = None
    rows, cache = [], {}
    jobs = [(t, s) for t in cfg.tasks for s in cfg.seeds]
    bar = tqdm(jobs, desc="bbh eval", unit="task-seed", disable=not progress)
    try:
        gen = choose_generator(generator, engine, log_dir)
        for task, seed in bar:
            bar.set_postfix(task=task[:24], seed=seed, generator=gen.name)
            rows.append(eval_task_seed(engine, gen, task, seed, cfg, cache))
            if on_row is not None:
                on_row(rows)
    finally:
        if gen is not None:
            gen.close()
        engine.close()
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """One line per task: chance, method means over seeds, LoraHub best seed, token counts."""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        rs = [r for r in rows if r["task"] == task]
        info = bigbench.task_info(task)
        line = {"task": task, "chance": round(100 * info.chance, 1), "seeds": len(rs)}
        for m in METHODS:
            vals = [r[m] for r in rs if r.get(m) is not None]
            line[m] = round(statistics.mean(vals), 1) if vals else None
        line["lorahub_best"] = max(r["lorahub"] for r in rs)
        line["input_tokens"] = rs[0]["input_tokens"]
        line["input_tokens_icl"] = round(statistics.mean(r["input_tokens_icl"] for r in rs), 1)
        out.append(line)
    return out


def markdown_table(summary: list[dict]) -> str:
    cols = ["task", "chance", "zero_shot", "icl", "lorahub", "lorahub_best", "lorahub_ngopt",
            "best_single", "input_tokens", "input_tokens_icl"]
    head = ["task", "chance", "zero-shot", "5-shot ICL", "LoraHub avg", "LoraHub best",
            "LoraHub (NGOpt)", "best single module", "tokens/ex", "tokens/ex ICL"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        lines.append("| " + " | ".join("-" if s.get(c) is None else str(s[c]) for c in cols) + " |")
    avg = {c: round(statistics.mean(s[c] for s in summary if s.get(c) is not None), 1)
           for c in cols[1:] if any(s.get(c) is not None for s in summary)}
    lines.append("| **average** | " + " | ".join(str(avg.get(c, "-")) for c in cols[1:]) + " |")
    return "\n".join(lines)


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in ("zero_shot", "icl", "lorahub", "lorahub_ngopt", "best_single")
               if any(s.get(m) is not None for s in summary)]
    x = np.arange(len(summary))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(summary)), 4.5))
    for i, m in enumerate(methods):
        ax.bar(x + i * width, [s.get(m) or 0 for s in summary], width, label=m)
    ax.scatter(x + 0.4 - width / 2, [s["chance"] for s in summary], marker="_", s=400, c="k", label="chance")
    ax.set_xticks(x + 0.4 - width / 2, [s["task"].replace("/", "\n") for s in summary], fontsize=7)
    ax.set_ylabel("exact match (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run_metadata() -> dict:
    """Machine, date and git commit, recorded with every report."""
    import datetime
    import os
    import platform
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, cwd=Path(__file__).parent, check=False).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit, "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "cpus": os.cpu_count(), "platform": platform.platform()}


def write_report(rows: list[dict], out_dir: Path, name: str, command: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = run_metadata()
    summary = summarise(rows)
    paths = {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md", "png": out_dir / f"{name}.png"}
    paths["json"].write_text(json.dumps({"command": command, "meta": meta, "rows": rows,
                                         "summary": summary}, indent=2))
    plot(summary, paths["png"])
    header = "\n".join(f"- {k}: {v}" for k, v in meta.items())
    paths["md"].write_text(f"# {name}\n\nCommand: `{command}`\n\n{header}\n\n{markdown_table(summary)}\n")
    return paths
