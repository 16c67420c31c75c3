"""`lorahub-serve eval --suite bbh`: what composition buys on held-out Big-Bench Hard tasks.

Per task and seed, with the same few-shot examples for every method:
- zero_shot: the base model;
- icl: the few-shot examples in the prompt (base model);
- lorahub: the default search (one-hot start + population CMA-ES) over K hub modules;
- lorahub_ngopt: the reference's sequential NGOpt at the same budget;
- best_single: the hub module with the lowest few-shot loss, at weight 1;
- soup: the `soup_k` modules with the lowest few-shot loss, weight 1/k each.
The per-module few-shot losses come from the search's start batch (each module alone), or from
one batched evaluation when the search had none.

Every method is scored twice (see `scoring` and `rank_classification`):
- EM (row key `m`): exact match of the greedy answer, read by one extractor for all methods;
  answers end at the first blank line (the few-shot separator, `eval.generation.STOP`);
- RC (row key `m_rc`): rank classification, the option whose answer string has the lowest mean
  cross-entropy given the method's prompt; None for generative tasks.
The evaluation set is fixed per task (split seed 0); the few-shot examples and the module
selection change with the seed. Tables and plots: `eval.report`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lorahub_serve.data import tasks as task_data
from lorahub_serve.data.examples import Example
from lorahub_serve.engine.adapt import AdaptResult, Engine
from lorahub_serve.engine.search import SearchConfig
from lorahub_serve.eval.generation import STOP  # the few-shot separator is also where answers end
from lorahub_serve.eval.rank_classification import Method, rank_classification
from lorahub_serve.scoring import accuracy

# `eval --suite bbh`: the official BBH files, every task of them
BBH_SUITE: tuple[str, ...] = task_data.bbh_tasks()
# The 8 tasks of the BBH table (bench/results/bbh_*): the paper's kind of tasks, short enough here
BBH_TABLE_TASKS: tuple[str, ...] = tuple(f"bbh/{t}" for t in (
    "sports_understanding", "navigate", "hyperbaton", "date_understanding",
    "logical_deduction_three_objects", "disambiguation_qa", "snarks", "object_counting"))

METHODS = ("zero_shot", "icl", "lorahub", "lorahub_ngopt", "best_single", "soup")


def rc_key(method: str) -> str:
    """The row key of a method's rank-classification accuracy."""
    return f"{method}_rc"


METRICS = ("both", "task")


@dataclass(frozen=True)
class EvalConfig:
    tasks: tuple[str, ...]
    seeds: tuple[int, ...] = (1, 2, 3)
    shots: int = 5
    limit: int = 50
    budget: int = 40
    modules: int | None = None  # K; default min(20, hub size)
    ngopt: bool = True
    soup_k: int = 3  # modules averaged by the soup baseline (at most K)
    contrast: float = 0.0  # the default search's option term (engine/objective.py)
    select: str = "loss"  # how the default search picks its K modules (engine/selection.py)
    rc_limit: int | None = None  # RC on the first N evaluation examples (None: all); it costs
    # n_options forward passes of every prompt, which dominates a CPU run
    metrics: str = "both"  # "both": EM and RC for every task; "task": only the task's own metric
    # (RC where every example has options, else EM), what the BBH table reads

    def __post_init__(self):
        unknown = [t for t in self.tasks if not task_data.is_eval_only(t)]
        if unknown:
            raise ValueError(f"not BBH tasks: {unknown}; choose from {', '.join(BBH_SUITE)}")
        if self.soup_k < 1:
            raise ValueError(f"soup_k must be >= 1 (modules in the soup), got {self.soup_k}")
        if self.metrics not in METRICS:
            raise ValueError(f"metrics must be one of {', '.join(METRICS)}, got {self.metrics!r}")


def icl_prompt(shots: Sequence[Example], example: Example) -> str:
    """The few-shot examples (input + output each), then the example's input, joined by `STOP`."""
    return STOP.join([*(f"{s.input}{s.output}" for s in shots), example.input])


def single_module_losses(engine: Engine, result: AdaptResult, key: str, idx: Sequence[int]) -> np.ndarray:
    """[K] few-shot loss of each chosen module alone at weight 1: the search's start batch when
    it evaluated all K one-hots, else one batched evaluation."""
    k = len(idx)
    start = result.start_losses
    if start is not None and len(start) == k + 1:
        return np.asarray(start[1:], dtype=np.float64)
    return engine.evaluator.losses([key] * k, np.tile(idx, (k, 1)), np.eye(k, dtype=np.float32))


def soup_weights(single_losses: np.ndarray, k: int) -> np.ndarray:
    """[K]: 1/k on the k modules with the lowest few-shot loss (k capped at K), 0 elsewhere."""
    k = min(k, len(single_losses))
    w = np.zeros(len(single_losses))
    w[np.argsort(single_losses, kind="stable")[:k]] = 1.0 / k
    return w


@dataclass
class Searches:
    """What the searches of one task-seed produced. idx: [K] hub indices; single_losses: [K]."""

    idx: list[int]
    lorahub: AdaptResult
    ngopt: AdaptResult | None
    single_losses: np.ndarray
    seconds: float
    ngopt_seconds: float


def run_searches(engine: Engine, shots: list[Example], key: str, seed: int, cfg: EvalConfig) -> Searches:
    """The default search, NGOpt (when `cfg.ngopt`) and the per-module losses, on `shots`."""
    k = cfg.modules
    t0 = time.perf_counter()
    res = engine.adapt(shots, task=key, modules=k, progress=False,
                       config=SearchConfig(budget=cfg.budget, seed=seed, contrast=cfg.contrast,
                                           select=cfg.select))
    idx = res.module_idx
    singles = single_module_losses(engine, res, key, idx)
    t1 = time.perf_counter()
    ng = (engine.adapt(shots, task=key, modules=k, progress=False,
                       config=SearchConfig(budget=cfg.budget, seed=seed, optimizer="ngopt"))
          if cfg.ngopt else None)
    return Searches(idx, res, ng, singles, t1 - t0, time.perf_counter() - t1)


def compositions(s: Searches, soup_k: int) -> dict[str, np.ndarray | None]:
    """Composition name -> [K] weights over the chosen modules (None: the base model)."""
    k = len(s.idx)
    comps = {"base": None, "lorahub": s.lorahub.weights,
             "best_single": np.eye(k)[int(np.argmin(s.single_losses))],
             "soup": soup_weights(s.single_losses, soup_k)}
    if s.ngopt is not None:
        comps["lorahub_ngopt"] = s.ngopt.weights
    return comps


def method_plan(comps: dict, shots: list[Example], evalset: list[Example],
                zero_shot: bool) -> dict[str, tuple[str, list[str]]]:
    """Method -> (composition name, prompts): plain prompts, or ICL prompts on the base model."""
    plain = [e.input for e in evalset]
    plan = {m: (m, plain) for m in comps if m != "base"}
    if zero_shot:
        plan["zero_shot"] = ("base", plain)
    plan["icl"] = ("base", [icl_prompt(shots, e) for e in evalset])
    return plan


def eval_task_seed(engine: Engine, generator, task: str, seed: int, cfg: EvalConfig, cache: dict) -> dict:
    """One report row: EM and RC of every method on `task`'s evaluation set with `seed`'s shots.
    `cache` keeps the zero-shot scores of a task (the same for every seed)."""
    shots, evalset = task_data.split(task_data.load_task(task), cfg.shots, cfg.limit, seed)
    key = f"{task}@{seed}"
    t0 = time.perf_counter()
    s = run_searches(engine, shots, key, seed, cfg)
    comps = compositions(s, cfg.soup_k)
    plan = method_plan(comps, shots, evalset, zero_shot=task not in cache)
    max_new = max(len(engine.tokenizer(e.output)["input_ids"]) for e in shots) + 4
    tag = f"{task.replace('/', '-')[:40]}-s{seed}"
    want_em, want_rc = wanted_metrics(cfg.metrics, evalset)
    preds, t_generate, t_start = (_answers(generator, tag, s.idx, comps, plan, max_new) if want_em
                                  else ({}, 0.0, 0.0))
    t1 = time.perf_counter()
    methods = {m: Method(prompts, comps[comp]) for m, (comp, prompts) in plan.items()}
    n_rc = (len(evalset) if cfg.rc_limit is None else cfg.rc_limit) if want_rc else 0
    methods = {m: Method(meth.prompts[:n_rc], meth.weights) for m, meth in methods.items()}
    rc = rank_classification(engine.evaluator, s.idx, methods, evalset[:n_rc], tag=f"rc:{key}") if want_rc else {}
    t_rc = time.perf_counter() - t1
    scores = ({m: accuracy(p, evalset) for m, p in preds.items()} | {rc_key(m): v for m, v in rc.items()}
)
    scores |= cache.setdefault(task, {m: scores.get(m) for m in ("zero_shot", rc_key("zero_shot"))})
    examples = [{"gold": e.output, **{m: p[i] for m, p in preds.items()}} for i, e in enumerate(evalset[:5])]
    return {"task": task, "seed": seed, **scores, **_search_fields(engine, s, cfg.soup_k),
            "generator": generator.name, "examples": examples,
            "search_seconds": round(s.seconds, 1), "ngopt_seconds": round(s.ngopt_seconds, 1),
            "generate_seconds": round(t_generate, 1), "rc_seconds": round(t_rc, 1),
            "server_start_seconds": round(t_start, 1), "total_seconds": round(time.perf_counter() - t0, 1),
            **_token_counts(engine, shots, evalset), "n_eval": len(evalset), "n_rc": n_rc}


def wanted_metrics(metrics: str, evalset: Sequence[Example]) -> tuple[bool, bool]:
    """(exact match?, rank classification?) for `metrics` ("both", or "task": the task's own:
    RC where every example has options, else EM)."""
    if metrics == "both":
        return True, True
    options = all(e.choices and e.gold_index is not None for e in evalset)
    return not options, options


def _answers(generator, tag: str, idx: list[int], comps: dict, plan: dict,
             max_new: int) -> tuple[dict[str, list[str]], float, float]:
    """Greedy answers per method; seconds spent answering, and starting a server (this call's)."""
    jobs = [(m, comp, prompts) for m, (comp, prompts) in plan.items()]
    t0, started = time.perf_counter(), generator.startup_seconds
    preds = generator.answers(tag, idx, comps, jobs, max_new)
    t_start = generator.startup_seconds - started
    return preds, time.perf_counter() - t0 - t_start, t_start


def _search_fields(engine: Engine, s: Searches, soup_k: int) -> dict:
    """The searches' outcome for the report: losses, objectives, optimisers, weights, modules."""
    names = [engine.hub_modules[i].name for i in s.idx]
    res, ng = s.lorahub, s.ngopt
    soup = np.flatnonzero(soup_weights(s.single_losses, soup_k))

    def rounded(w):
        return [round(float(x), 5) for x in w]

    return {"best_single_module": names[int(np.argmin(s.single_losses))],
            "soup_modules": [names[i] for i in soup],
            "single_losses": rounded(s.single_losses),
            "lorahub_loss": res.best_loss, "ngopt_loss": ng.best_loss if ng else None,
            "lorahub_objective": res.best_objective, "ngopt_objective": ng.best_objective if ng else None,
            "optimizer": res.optimizer, "ngopt_optimizer": ng.optimizer if ng else None,
            "modules": names, "lorahub_weights": rounded(res.weights),
            "ngopt_weights": rounded(ng.weights) if ng else None,
            "evals_per_second": round(res.evals_per_second, 2)}


def _token_counts(engine: Engine, shots: list[Example], evalset: list[Example]) -> dict:
    """Mean prompt tokens per evaluation example, plain and with the ICL shots."""
    def n(text):
        return len(engine.tokenizer(text)["input_ids"])

    return {"input_tokens": round(statistics.mean(n(e.input) for e in evalset), 1),
            "input_tokens_icl": round(statistics.mean(n(icl_prompt(shots, e)) for e in evalset), 1)}


def run_eval(model: str, hub: str, cfg: EvalConfig, progress: bool = True, on_row=None,
             generator: str = "auto", log_dir: Path | None = None) -> list[dict]:
    """All (task, seed) rows; `on_row(rows)` after each one (the CLI rewrites its report then, so
    a long run that is stopped keeps what it measured). `generator`: see `eval.generation`."""
    from tqdm.auto import tqdm

    from lorahub_serve.eval.generation import choose_generator

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
