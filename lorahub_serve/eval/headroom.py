"""`lorahub-serve eval --suite headroom`: every method on the tasks this model can learn.

Per suite task and seed, on the same 5 shots (`tasks.split`: the evaluation set, the first
`limit` examples of a seed-0 shuffle, is the same for every seed and every method; the seed draws
the shots, the random module choice and the search):
- zero_shot, icl (the shots in the prompt), on the base model;
- lorahub: the default search over K modules chosen by `select`;
- lorahub_random: the same search over K seeded-random modules (the paper's choice);
- lorahub_ngopt: the reference's sequential NGOpt, same modules as lorahub;
- best_single, soup: the lowest-loss module alone / the soup_k lowest averaged (lorahub's K);
- lorahub_icl: lorahub's composition with the shots also in the prompt (what a server can do
  with both; not the paper's method, reported beside it);
- lorahub_icl_tuned (opt-in, `--methods`): the same pairing, but the search is tuned for it: each
  shot is scored after the other shots (`loo_icl_examples`), the prompts the composition will
  serve with; its K modules are selected on those prompts too;
- lora_ft: a LoRA fine-tuned with gradients on the 5 shots (the paper's baseline: 40 epochs);
- oracle: the suite's oracle, trained on the task's other examples (the ceiling);
- arrow, arrow_hub (opt-in, `--methods`): PEFT's Arrow (`ArrowConfig`, `create_arrow_model`:
  per-token routing to the top_k modules whose leading singular direction best matches the
  token's hidden state) over lorahub's K modules, or over the whole hub; gradient-free like
  LoraHub and given no shots. It routes per token, so it is an evaluation method (a PEFT model
  with every module loaded), not an adapter that `adapt` could export or `serve` could load.
Engine methods are scored on the engine (rank classification with the shared prompt; greedy
generation); the two PEFT models (lora_ft, oracle) by `adapter_scoring`, which also re-scores
the base model (`zero_shot_peft`) so the two paths can be compared. Metric: the suite's, rank
classification for multiple-choice tasks, exact match for generative ones.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lorahub_serve.data import tasks as task_data
from lorahub_serve.data.examples import Example
from lorahub_serve.engine.adapt import Engine
from lorahub_serve.engine.search import SearchConfig
from lorahub_serve.eval.rank_classification import Method, rank_classification
from lorahub_serve.eval.run import icl_prompt, soup_weights
from lorahub_serve.scoring import accuracy as em_accuracy

ENGINE_METHODS = ("zero_shot", "icl", "lorahub", "lorahub_random", "lorahub_ngopt", "best_single", "soup",
                  "lorahub_icl")
PEFT_METHODS = ("lora_ft", "oracle")
DEFAULT_METHODS = ENGINE_METHODS + PEFT_METHODS
# Levers beyond the paper (issue 35), each scored as the adapter `adapt` would export (PEFT):
# name -> (SearchConfig changes from lorahub's search, refinement form or None). lorahub_export is
# lorahub's own composition through the same path, so a lever's paired difference with it isolates
# the lever from the scoring path.
LEVERS: dict[str, tuple[dict, str | None]] = {
    "lorahub_export": ({}, None),
    "lorahub_refine_w": ({}, "weights"),  # compose, then refine the K weights (provenance stays exact)
    "lorahub_refine_f": ({}, "factors"),  # compose, then refine the exported A, B
    "lorahub_g2": ({"groups": 2}, None),  # a weight per module and per half of the layers
    "lorahub_g4": ({"groups": 4}, None),
    "lorahub_g4_x2": ({"groups": 4, "budget_factor": 2}, None),  # G = 4 at twice the budget
}
OPT_IN_METHODS = ("lorahub_icl_tuned",  # a lever under study: its search costs ~5x (long prompts)
                  "arrow", "arrow_hub",  # PEFT's Arrow, a rival: over lorahub's K modules / the whole hub
                  *LEVERS)
METHODS = DEFAULT_METHODS + OPT_IN_METHODS
SHOT_PROMPT_METHODS = ("icl", "lorahub_icl", "lorahub_icl_tuned")  # the 5 shots ride in every prompt


@dataclass(frozen=True)
class HeadroomConfig:
    suite: Path
    tasks: tuple[str, ...] | None = None  # default: the suite's kept tasks
    seeds: tuple[int, ...] = (1, 2, 3)
    shots: int = 5
    limit: int = 100
    budget: int = 40
    modules: int | None = None
    select: str = "loss"
    ngopt: bool = True
    soup_k: int = 3
    contrast: float = 0.0
    ft_epochs: int = 40  # the paper's LoRA-tuning baseline: 40 epochs over the shots ...
    ft_lr: float = 2e-4  # ... at lr 2e-4
    ft_dtype: str = "bfloat16"
    arrow_top_k: int = 3  # Arrow: modules routed to per token (PEFT's default) ...
    arrow_temperature: float = 1.0  # ... and its router's softmax temperature (PEFT's default)
    refine_steps: int = 20  # levers lorahub_refine_*: N asked; the leave-one-out guard keeps n* <= N
    dtype: str = "auto"  # the engine's (models.resolve_dtype): bf16 on CPUs with native bf16
    # the methods to score; zero-shot, LoraHub and the oracle always run (the report's gap needs them)
    methods: tuple[str, ...] = DEFAULT_METHODS

    def __post_init__(self):
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ValueError(f"methods {unknown} are not known; choose from {', '.join(METHODS)}")
        object.__setattr__(self, "methods", tuple(dict.fromkeys(
            ("zero_shot", "lorahub", *self.methods, "oracle"))))

    def wants(self, method: str) -> bool:
        return method in self.methods


def read_suite(path: Path) -> dict:
    suite = json.loads(Path(path).read_text())
    if not suite.get("tasks"):
        raise ValueError(f"{path}: the suite keeps no task yet; run `lorahub-serve suite build`")
    return suite


def _engine_scores(engine: Engine, idx: list[int], comps: dict, prompts: dict, evalset, metric: str,
                   tag: str, native: dict | None = None) -> dict[str, float]:
    """Accuracy of each method (composition over `idx` + its prompts) on the engine; generated
    answers' own-source scores (reasoning-gym's score_answer) go into `native` by method."""
    if metric == "rc":
        methods = {m: Method(prompts[m], comps[m]) for m in comps}
        return rank_classification(engine.evaluator, idx, methods, evalset, tag=tag)
    from lorahub_serve.eval.generation import EngineGenerator

    max_new = max(len(engine.tokenizer(e.output, add_special_tokens=False)["input_ids"]) for e in evalset) + 2
    jobs = [(name, name, prompts[name]) for name in comps]
    answers = EngineGenerator(engine).answers(tag, idx, comps, jobs, max_new)
    _native(native, tag, answers, evalset)
    return {name: em_accuracy(answers[name], evalset) for name in comps}


def _native(native: dict | None, tag: str, answers: dict, evalset) -> None:
    """Record each method's own-source score of its answers (`tag` is rc:<task>@<seed>)."""
    if native is None:
        return
    task = tag.split(":", 1)[1].rsplit("@", 1)[0]
    for name, preds in answers.items():
        score = task_data.native_percent(task, evalset, preds)
        if score is not None:
            native[name] = round(score, 2)


def _peft_score(net, tok, adapter: Path | None, evalset, dtype: str, native: dict | None = None,
                tag: str = "", name: str = "") -> float:
    """Accuracy of the base model (adapter None) or of `adapter` through PEFT; with `native`,
    generated answers' own-source scores too (as `native[name]`)."""
    from lorahub_serve.adapter_scoring import accuracy, generated_answers

    model = net
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(net, adapter).eval()
    try:
        if native is None or any(e.choices for e in evalset):
            return accuracy(model, tok, evalset, dtype=dtype)[1]
        preds = generated_answers(model, tok, evalset, dtype)
        _native(native, tag, {name: preds}, evalset)
        return em_accuracy(preds, evalset)
    finally:
        if adapter is not None:
            model.unload()


def arrow_score(net, tok, adapters: list[Path], evalset, cfg: HeadroomConfig, seed: int,
                on_model=None) -> float:
    """Accuracy of PEFT's Arrow over the LoRA folders `adapters` (one rank, one set of target
    layers: Arrow's own requirement), built by PEFT's `create_arrow_model` on `net` and unloaded
    afterwards; `on_model(model)` sees the PEFT model before it scores (tests)."""
    from peft import ArrowConfig, create_arrow_model

    from lorahub_serve.adapter_scoring import accuracy
    from lorahub_serve.engine.hub import module_from_folder

    ranks = sorted({module_from_folder(Path(p)).rank for p in adapters})
    if len(ranks) > 1:
        raise ValueError(f"arrow: PEFT's Arrow needs modules of one rank; these have ranks {ranks} "
                         "(leave arrow out of --methods for this hub)")
    arrow = ArrowConfig(top_k=min(cfg.arrow_top_k, len(adapters)), router_temperature=cfg.arrow_temperature,
                        rng_seed=seed)
    model = create_arrow_model(net, [str(p) for p in adapters], arrow).eval()
    try:
        if on_model is not None:
            on_model(model)
        return accuracy(model, tok, evalset, dtype="float32")[1]
    finally:
        model.unload()


def lever_scores(engine: Engine, net, tok, shots: list[Example], evalset, res, names: list[str],
                 search: SearchConfig, cfg: HeadroomConfig, key: str, work: Path,
                 native: dict | None = None) -> dict:
    """The levers of `cfg.methods` (LEVERS): each adapter as `adapt` would export it, scored by
    PEFT on the evaluation set. Refinement starts from lorahub's own composition `res`; layer
    groups search again over lorahub's K modules `names`. Returns scores and per-lever records."""
    from lorahub_serve.engine.refine import RefineConfig

    scores, records = {}, {}
    for name, (changes, refine_on) in LEVERS.items():
        if not cfg.wants(name):
            continue
        t0 = time.perf_counter()
        if refine_on is not None:
            result = engine.refine(res, shots, RefineConfig(steps=cfg.refine_steps, on=refine_on), l1=search.l1)
        elif changes:
            budget = search.budget * changes.get("budget_factor", 1)
            result = engine.adapt(shots, task=f"{key}/{name}", modules=names, progress=False,
                                  config=replace(search, groups=changes.get("groups", 1), budget=budget))
        else:
            result = res
        # adaptation time: lorahub's search plus the refinement, or the lever's own search
        seconds = (res.seconds if refine_on or not changes else 0.0) + time.perf_counter() - t0
        out = engine.export(result, work / f"{name}-{key.replace('/', '-').replace('@', '-')}")
        scores[name] = _peft_score(net, tok, out, evalset, "float32", native, f"rc:{key}", name)
        records[name] = {"adapt_seconds": round(seconds, 2),
                         **({"refine": result.extra.get("refine")} if refine_on else {}),
                         **({"weights": np.asarray(result.weights).round(4).tolist()} if changes else {})}
    return {"scores": scores, "records": records}


def loo_icl_examples(shots: list[Example]) -> list[Example]:
    """Each shot as the query after the other shots (leave one out): the prompts a composition
    meets when it is served with the shots in the prompt, without scoring a shot it can see."""
    return [replace(s, input=icl_prompt(shots[:i] + shots[i + 1:], s)) for i, s in enumerate(shots)]


def fewshot_lora(net, tok, shots: list[Example], cfg: HeadroomConfig, seed: int, out: Path) -> Path:
    """The LoRA-tuning baseline: rank 8 on q,v, one batch of all shots per epoch."""
    from lorahub_serve.hub.train import TrainConfig, train_lora

    tc = TrainConfig(steps=cfg.ft_epochs, batch_size=len(shots), lr=cfg.ft_lr, max_length=512,
                     seed=seed, heldout=0, dtype=cfg.ft_dtype)
    train_lora(net, tok, shots, out, tc)
    return out


def eval_task_seed(engine: Engine, plain, task: str, seed: int, cfg: HeadroomConfig, meta: dict,
                   cache: dict, work: Path) -> dict:
    """One report row: every method's accuracy on `task` with `seed`'s shots."""
    net, tok = plain
    shots, evalset = task_data.split(task_data.load_task(task), cfg.shots, cfg.limit, seed)
    metric, key, t0 = meta["metric"], f"{task}@{seed}", time.perf_counter()
    k = cfg.modules
    search = SearchConfig(budget=cfg.budget, seed=seed, contrast=cfg.contrast, select=cfg.select)
    res = engine.adapt(shots, task=key, modules=k, progress=False, config=search)
    idx = res.module_idx
    singles = np.asarray(res.start_losses[1:]) if res.start_losses is not None else None
    comps = {"zero_shot": None, "lorahub": res.weights} | ({"icl": None} if cfg.wants("icl") else {})
    if cfg.wants("lorahub_icl"):
        comps["lorahub_icl"] = res.weights
    if singles is not None and len(singles) == len(idx):
        if cfg.wants("best_single"):
            comps["best_single"] = np.eye(len(idx))[int(np.argmin(singles))]
        if cfg.wants("soup"):
            comps["soup"] = soup_weights(singles, cfg.soup_k)
    names = [engine.hub_modules[i].name for i in idx]
    if cfg.ngopt and cfg.wants("lorahub_ngopt"):
        ng = engine.adapt(shots, task=key + "/ng", modules=names, progress=False,
                          config=SearchConfig(budget=cfg.budget, seed=seed, optimizer="ngopt"))
        comps["lorahub_ngopt"] = ng.weights
    plain_prompts = [e.input for e in evalset]
    shot_prompts = [icl_prompt(shots, e) for e in evalset]
    prompts = {m: plain_prompts for m in comps} | {"icl": shot_prompts, "lorahub_icl": shot_prompts}
    if "zero_shot" in cache.get(task, {}):  # zero-shot does not depend on the seed
        comps.pop("zero_shot")
    native: dict[str, float] = {}  # reasoning-gym's own score_answer of each method's answers
    scores = _engine_scores(engine, idx, comps, prompts, evalset, metric, f"rc:{key}", native)
    t_search = time.perf_counter() - t0
    phase = {"lorahub+engine_scoring": round(t_search, 1)}  # wall seconds of each phase (for planning runs)
    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phase[name] = round(now - mark, 1)
        mark = now
    rnd = None
    if cfg.select != "random" and cfg.wants("lorahub_random"):
        rnd = engine.adapt(shots, task=key + "/rnd", modules=k, progress=False,
                           config=SearchConfig(budget=cfg.budget, seed=seed, contrast=cfg.contrast))
        scores |= {"lorahub_random": _engine_scores(
            engine, rnd.module_idx, {"lorahub_random": rnd.weights}, {"lorahub_random": plain_prompts},
            evalset, metric, f"rcr:{key}", native)["lorahub_random"]}
        lap("lorahub_random")
    tuned = None
    if cfg.wants("lorahub_icl_tuned"):
        tuned = engine.adapt(loo_icl_examples(shots), task=key + "/icl", modules=k, progress=False,
                             config=search)
        scores |= _engine_scores(engine, tuned.module_idx, {"lorahub_icl_tuned": tuned.weights},
                                 {"lorahub_icl_tuned": shot_prompts}, evalset, metric, f"rci:{key}", native)
        lap("lorahub_icl_tuned")
    if cfg.wants("lora_ft"):
        ft_dir = fewshot_lora(net, tok, shots, cfg, seed, work / f"ft-{task.replace('/', '-')}-{seed}")
        scores["lora_ft"] = _peft_score(net, tok, ft_dir, evalset, cfg.ft_dtype, native, f"rc:{key}", "lora_ft")
        lap("lora_ft")
    levers = lever_scores(engine, net, tok, shots, evalset, res, names, search, cfg, key, work, native)
    scores |= levers["scores"]
    lap("levers")
    if cfg.wants("arrow"):
        scores["arrow"] = arrow_score(net, tok, [engine.hub_modules[i].path for i in idx], evalset, cfg, seed)
        lap("arrow")
    if cfg.wants("arrow_hub"):
        # over the whole hub and given no shots, Arrow's score does not depend on the seed (its
        # rng_seed only starts a power iteration whose sign-invariant result it routes with): once
        # per task, like zero-shot; ~400 s a task-seed here, as PEFT's Arrow runs every expert
        if "arrow_hub" not in cache.get(task, {}):
            cache.setdefault(task, {})["arrow_hub"] = arrow_score(
                net, tok, [m.path for m in engine.hub_modules], evalset, cfg, seed=0)
        scores["arrow_hub"] = cache[task]["arrow_hub"]
        lap("arrow_hub")
    if "oracle" not in cache.get(task, {}):
        fixed: dict[str, float] = {k: v for k, v in native.items() if k == "zero_shot"}
        cache[task] = cache.get(task, {}) | {"zero_shot": scores["zero_shot"],
                       "zero_shot_peft": _peft_score(net, tok, None, evalset, "float32"),
                       "oracle": _peft_score(net, tok, meta["oracle_dir"], evalset, "float32", fixed,
                                             f"rc:{key}", "oracle"),
                       "native_fixed": fixed}  # zero-shot and the oracle do not depend on the seed
        lap("zero_shot_peft+oracle")
    native = cache[task].get("native_fixed", {}) | native
    scores |= {k: v for k, v in cache[task].items() if k != "native_fixed"}
    return {"task": task, "seed": seed, "metric": metric, "closeness": meta["closeness"],
            "chance": meta["chance"], "majority": meta["majority"], **scores,
            "modules": names, "lorahub_weights": [round(float(w), 4) for w in res.weights],
            "random_modules": ([engine.hub_modules[i].name for i in rnd.module_idx] if rnd else None),
            **({"icl_tuned_modules": [engine.hub_modules[i].name for i in tuned.module_idx],
                "icl_tuned_weights": [round(float(w), 4) for w in tuned.weights]} if tuned else {}),
            **({"native": native} if native else {}),
            "select": cfg.select, "lorahub_loss": res.best_loss,
            "input_tokens": round(float(np.mean([len(tok(e.input)["input_ids"]) for e in evalset])), 1),
            "input_tokens_icl": round(float(np.mean([len(tok(p)["input_ids"]) for p in shot_prompts])), 1),
            "n_eval": len(evalset), "dtype": engine.dtype, "ft_lr": cfg.ft_lr, "ft_epochs": cfg.ft_epochs,
            **({"levers": levers["records"], "refine_steps": cfg.refine_steps} if levers["records"] else {}),
            "lorahub_seconds": round(res.seconds, 2),
            **({"arrow_top_k": cfg.arrow_top_k, "arrow_temperature": cfg.arrow_temperature}
               if cfg.wants("arrow") or cfg.wants("arrow_hub") else {}),
            "search_seconds": round(t_search, 1), "phase_seconds": phase,
            "total_seconds": round(time.perf_counter() - t0, 1)}


def refresh_closeness(rows: list[dict], suite: dict) -> list[dict]:
    """near/far against the hub as it is now (rows record it as it was when they ran)."""
    by_task = {c["task"]: c for c in suite["candidates"]}
    for r in rows:
        r["closeness"] = by_task.get(r["task"], r)["closeness"]
    return rows


def run_headroom_eval(model: str, hub: str, cfg: HeadroomConfig, on_row=None, progress: bool = True,
                      done: list[dict] | None = None) -> list[dict]:
    """All (task, seed) rows; rows in `done` are kept and not re-run (a stopped run resumes)."""
    import tempfile

    from tqdm.auto import tqdm

    from lorahub_serve.models import load_base, resolve_model

    suite = read_suite(cfg.suite)
    by_task = {c["task"]: c for c in suite["candidates"]}
    tasks = cfg.tasks or tuple(suite["tasks"])
    unknown = [t for t in tasks if t not in suite["tasks"]]
    if unknown:
        raise ValueError(f"{unknown} are not tasks the suite {cfg.suite} keeps; it has {suite['tasks']}")
    oracle_root = Path(suite["oracle_hub"])
    if not oracle_root.exists():  # the manifest names it relative to the repo it was built in
        from lorahub_serve.paths import repo_root

        oracle_root = repo_root() / "hubs" / oracle_root.name
    rows = refresh_closeness(list(done or []), suite)
    have = {(r["task"], r["seed"]) for r in rows}
    cache = {r["task"]: {m: r[m] for m in ("zero_shot", "zero_shot_peft", "oracle", "arrow_hub") if m in r}
             | {"native_fixed": {m: v for m, v in r.get("native", {}).items() if m in ("zero_shot", "oracle")}}
             for r in rows}
    # seed-major: a run stopped early still covers every task
    jobs = [(t, s) for s in cfg.seeds for t in tasks if (t, s) not in have]
    engine = Engine(model, hub, dtype=cfg.dtype)
    plain = load_base(resolve_model(model))
    try:
        with tempfile.TemporaryDirectory(prefix="lorahub-headroom-") as tmp:
            for task, seed in tqdm(jobs, desc="headroom eval", unit="task-seed", disable=not progress):
                meta = dict(by_task[task], oracle_dir=oracle_root / "modules" / task.replace("/", "__"))
                rows.append(eval_task_seed(engine, plain, task, seed, cfg, meta, cache, Path(tmp)))
                if on_row is not None:
                    on_row(rows)
    finally:
        engine.close()
    return rows
