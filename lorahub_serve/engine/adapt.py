"""`adapt`: few-shot examples in, composed adapter out. The Python API behind `lorahub-serve adapt`.

    from lorahub_serve import adapt
    result = adapt("smollm2-135m", "hubs/smollm2-135m", "examples.jsonl", out="store/my-task")
    result.best_loss, result.weights, result.out_dir

`Engine` keeps the base model and the hub's stacked factors loaded across many adaptations
(evaluation, the cluster's actors); `adapt()` is a one-shot wrapper around it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from lorahub_serve.data.examples import Example, load_examples
from lorahub_serve.engine.config import EngineConfig
from lorahub_serve.engine.evaluator import Evaluator
from lorahub_serve.engine.export import compose_factors, composed_rank, merge_adapter, write_adapter
from lorahub_serve.engine.hub import (
    ModuleInfo,
    default_k,
    read_manifest,
    resolve_modules,
    stack_modules,
)
from lorahub_serve.engine.layer_groups import group_members, layer_groups, weights_spec
from lorahub_serve.engine.merge import MergeSpec, as_spec
from lorahub_serve.engine.refine import RefineConfig
from lorahub_serve.engine.search import SearchConfig, SearchState, run_search
from lorahub_serve.formats import LORAHUB_FORMAT


@dataclass
class AdaptResult:
    task: str
    modules: list[ModuleInfo]
    weights: np.ndarray  # [K], aligned with `modules`; [G, K] with per-layer-group weights (G > 1)
    best_loss: float  # few-shot cross-entropy of the best candidate (without the L1 term; with
    # the option term when config.contrast > 0)
    best_objective: float  # best_loss + l1 · mean|w|
    history: list[float]  # objective (loss + L1) of each evaluation, in order
    optimizer: str
    config: SearchConfig
    rule: str
    evaluations: int
    seconds: float
    out_dir: Path | None = None
    extra: dict = field(default_factory=dict)
    start_losses: np.ndarray | None = None  # [1 + K]: w = 0, then each module alone; None: no start
    module_idx: list[int] | None = None  # [K] positions of `modules` in the hub
    factors: dict | None = None  # layer -> (A, B) refined by `--refine-on factors` (exported as is)

    @classmethod
    def from_state(cls, task: str, hub_modules: list[ModuleInfo], module_idx, state: SearchState,
                   config: SearchConfig, rule: str, seconds: float) -> AdaptResult:
        """The result of a search over hub modules `module_idx` [K] (the best point of `state`)."""
        idx = [int(i) for i in module_idx]
        weights = state.best_weights
        if config.groups > 1:  # group-major G·K -> [G, K]
            weights = np.asarray(weights).reshape(config.groups, len(idx))
        return cls(task, [hub_modules[i] for i in idx], weights, state.best_loss,
                   state.best_objective, state.history, state.optimizer_name, config, rule,
                   state.evaluations, seconds, start_losses=state.start_losses, module_idx=idx,
                   # start-batch losses taken from the selection pass, not evaluated again
                   extra={"reused_evaluations": state.reused_evaluations})

    @property
    def evals_per_second(self) -> float:
        return self.evaluations / self.seconds if self.seconds else float("nan")

    def metadata(self, base_model: str, base_fingerprint: str, export: MergeSpec | None = None) -> dict:
        """lorahub.json of the adapter exported with `export` (default: the search's rule):
        "rule" is the exported adapter's, "search_rule" the search's; "merge_seed" is DARE's."""
        spec = export or MergeSpec(self.rule)
        grouped = np.ndim(self.weights) == 2

        def weight(k: int):  # module k's weight, or its weight in each layer group
            return [float(w) for w in self.weights[:, k]] if grouped else float(self.weights[k])

        return {
            "format": LORAHUB_FORMAT, "task": self.task, "base_model": base_model,
            "base_model_sha256": base_fingerprint, "rule": spec.rule, "search_rule": self.rule,
            "density": spec.density, "majority_sign_method": spec.majority_sign_method,
            "merge_seed": spec.seed,
            "modules": [{"name": m.name, "source_task": m.source_task, "sha256": m.sha256,
                         "rank": m.rank, "alpha": m.alpha, "weight": weight(k)}
                        for k, m in enumerate(self.modules)],
            "weights": np.asarray(self.weights, dtype=np.float64).tolist(),  # [K], or [G, K]
            "weights_spec": weights_spec(self.config.groups), "best_loss": self.best_loss,
            "best_objective": self.best_objective,
            "objective_history": self.history,  # loss + l1·mean|w| of each evaluation, in order
            "seed": self.config.seed, "budget": self.config.budget, "optimizer": self.optimizer,
            "search": self.config.describe(len(self.modules)), "evaluations": self.evaluations,
            "seconds": round(self.seconds, 3), "evals_per_second": round(self.evals_per_second, 3),
            **self.extra,
        }


@dataclass
class ModuleChoice:
    """A task's K modules and how they were chosen (`Engine.choose_modules`)."""

    idx: list[int]  # [K] hub positions
    record: dict  # for lorahub.json: select_evaluations (modules scored alone), select_losses
    onehot_losses: np.ndarray | None = None  # [K] each chosen module alone (`loss`): the start
    # batch reuses them


def choice_extra(select: str, record: dict, seconds: float) -> dict:
    """lorahub.json's account of the module choice, the same from `adapt` and `adapt-batch`: the
    mode, its record, and the seconds spent choosing (`select_seconds`, in `record` when any)
    apart from the search's (`search_seconds`); `seconds` is both together."""
    select_s = float(record.get("select_seconds", 0.0))
    return {"select": select, **record, "select_seconds": round(select_s, 3),
            "search_seconds": round(seconds - select_s, 3)}


def exported_spec(meta: dict) -> MergeSpec:
    """The `MergeSpec` an adapter's lorahub.json records (`AdaptResult.metadata` wrote it); a
    ValueError when the record is not a valid one."""
    return MergeSpec(meta.get("rule", "lorahub"), meta.get("density"), meta.get("majority_sign_method"),
                     meta.get("merge_seed"))


class Engine:
    """Base model + all hub modules attached once; adapts task after task.

    model: registry name or HF folder; hub: hub folder;
    config: an `EngineConfig` (rule, backend, dtype, token budget, truncate, allow_pickle);
    `options` override its fields. dtype "auto": bf16 on CUDA and on CPUs with native bf16, else fp32; "float32" |
    "bfloat16" | "float16"; warmup: run one tiny batch at start so kernel JIT is paid here
    (`startup_seconds` and `evaluator.warmup_seconds` report start-up apart from search time).
    """

    def __init__(self, model: str | Path, hub: str | Path, config: EngineConfig | None = None, *,
                 device: str | None = None, warmup: bool = True, **options):
        import torch

        from lorahub_serve.light_imports import load_optimizers
        from lorahub_serve.models import folder_fingerprint, load_base, resolve_dtype, resolve_model

        t0 = time.perf_counter()
        load_optimizers()  # start-up, not the first search, pays nevergrad's and pycma's imports

        self.config = config = (config or EngineConfig()).with_options(**options)
        rule, backend, dtype = config.rule, config.backend, config.dtype
        self.model_name = str(model)
        self.model_folder = resolve_model(model)
        self.fingerprint = folder_fingerprint(self.model_folder)
        self.hub_dir = Path(hub)
        self.hub_modules = read_manifest(self.hub_dir)
        device = device or ("cuda" if torch.cuda.is_available() else None)  # kernels need CUDA
        self.dtype = resolve_dtype(dtype, device)
        if self.dtype == "float32" and device and str(device).startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 on CUDA: TF32 tensor cores
        self.net, self.tokenizer = load_base(self.model_folder, self.dtype)
        if device:
            self.net.to(device)
        self.stack = stack_modules(self.net, self.hub_modules, allow_pickle=config.allow_pickle,
                                   dtype=getattr(torch, self.dtype))
        self.rule = rule
        self.evaluator = Evaluator(self.net, self.tokenizer, self.stack, rule, backend, config.token_budget,
                                   truncate=config.truncate)
        if warmup:
            self.evaluator.warmup()
        self.startup_seconds = time.perf_counter() - t0

    def module_indices(self, modules: int | Sequence[str] | None, seed: int) -> list[int]:
        """Hub positions of a task's modules (see `hub.resolve_modules`)."""
        return resolve_modules(self.hub_modules, modules, seed)

    def choose_modules(self, task: str, exs: list[Example], modules: int | Sequence[str] | None,
                       config: SearchConfig) -> ModuleChoice:
        """The K hub modules for a task already added to the evaluator (`engine/selection.py`);
        names in `modules` are taken as given. `loss` scores every module alone only when K < N."""
        from lorahub_serve.engine import selection

        named = isinstance(modules, (list, tuple))
        n = len(self.hub_modules)
        k = default_k(n) if modules is None else modules
        if config.select == "retrieve" and not named:
            cents = selection.read_centroids(self.hub_dir, [m.name for m in self.hub_modules])
            query = selection.input_centroid(self.net, self.tokenizer, [e.input for e in exs])
            return ModuleChoice(selection.nearest_k(cents, query, k), {"select_evaluations": 0})
        if not selection.scores_every_module(config.select, modules, n):  # random, named, or K >= N
            return ModuleChoice(self.module_indices(modules, config.seed), {"select_evaluations": 0})
        losses = selection.single_losses(self.evaluator, task, n)
        idx, chosen, record = selection.choose_by_loss(losses, k)
        return ModuleChoice(idx, record, chosen)

    def adapt(self, examples, task: str = "task", modules: int | Sequence[str] | None = None,
              config: SearchConfig | None = None, out: str | Path | None = None, merge: bool = False,
              progress: bool = True,
              on_generation: Callable[[SearchState], None] | None = None,
              export_rule: str | MergeSpec | None = None, refine: RefineConfig | None = None) -> AdaptResult:
        """Search weights for `examples`; `on_generation(state)` is called after each generation
        (progress as data; an exception it raises stops the search and propagates).
        export_rule: how `out` composes the weights found (default: the search's rule);
        refine: gradient steps from the composition after the search (`engine/refine.py`)."""
        config = config or SearchConfig()
        export = None if export_rule is None else as_spec(export_rule)  # checked before the search
        groups = config.groups
        layer_groups(self.stack.layers, groups)  # G more than the blocks adapted: fail now
        if groups > 1 and export is not None and export.is_merge:
            raise ValueError(f"--export-rule {export.rule} merges global weights; with --weights "
                             f"{weights_spec(groups)} export with lorahub or linear")
        exs: list[Example] = load_examples(examples)
        self.evaluator.add_task(task, exs, contrast=config.contrast)
        t0 = time.perf_counter()
        choice = self.choose_modules(task, exs, modules, config)
        idx = choice.idx
        t_search = time.perf_counter()  # the bar's rate is the search's: --select loss scores N modules first
        if export is not None and out is not None:  # e.g. a PEFT merge of mixed ranks: fail now
            composed_rank([self.hub_modules[i].rank for i in idx], export)
        bar = _progress(progress, config.budget, task)

        def loss_fn(w: np.ndarray) -> np.ndarray:  # [P, G·K] -> [P]
            if groups > 1:
                w = w.reshape(len(w), groups, len(idx))  # [P, G, K]: one batched pass all the same
            return self.evaluator.losses([task] * len(w), np.tile(idx, (len(w), 1)), w)

        def on_gen(s: SearchState) -> None:
            if bar is not None:
                bar.update(s.evaluations - bar.n)
                bar.set_postfix(best=f"{s.best_objective:.4f}", evals_s=f"{s.evaluations / (time.perf_counter() - t_search):.2f}")
            if on_generation is not None:
                on_generation(s)

        start = SearchState(len(idx), config, known_onehot=choice.onehot_losses)
        state = run_search(loss_fn, len(idx), config, on_gen, state=start)
        if bar is not None:
            bar.close()
        result = AdaptResult.from_state(task, self.hub_modules, idx, state, config, self.rule,
                                        time.perf_counter() - t0)
        result.extra["dtype"] = self.dtype
        if groups > 1:
            result.extra["layer_groups"] = group_members(self.stack.layers, groups)  # [G] layer names
        record = {**choice.record, "select_seconds": t_search - t0}
        result.extra.update(choice_extra(config.select, record, result.seconds))
        if refine is not None and refine.steps:
            self._refine(result, exs, refine, export, config.l1)
        if out is not None:
            self.export(result, Path(out), merge=merge, export_rule=export)
        return result

    def refine(self, result: AdaptResult, examples, cfg: RefineConfig, l1: float | None = None,
               export_rule: str | MergeSpec | None = None) -> AdaptResult:
        """A refined copy of a search's `result` (what `adapt(..., refine=cfg)` would return, without
        searching again); `result` itself is left as it is. l1: the search's (default SearchConfig's)."""
        refined = replace(result, extra=dict(result.extra))
        export = None if export_rule is None else as_spec(export_rule)
        self._refine(refined, load_examples(examples), cfg, export, SearchConfig().l1 if l1 is None else l1)
        return refined

    def _refine(self, result: AdaptResult, exs: list[Example], cfg: RefineConfig,
                export: MergeSpec | None, l1: float) -> None:
        """Refine `result` in place: new weights (form weights; the search's kept as
        `search_weights`) or refined factors (form factors), and lorahub.json's `refine` record."""
        from lorahub_serve.engine.refine_steps import refine

        spec = export or MergeSpec(self.rule)
        ref = refine(self.net, self.tokenizer, self.stack, result.module_idx, result.weights, exs, cfg,
                     self.rule, spec, l1, allow_pickle=self.config.allow_pickle)
        if ref.weights is not None:
            result.extra["search_weights"] = np.asarray(result.weights, dtype=np.float64).tolist()
            result.weights = ref.weights
        else:
            result.factors = ref.factors
        result.extra["refine"] = ref.record
        # whether the exported adapter is exactly the recorded weights' composition of the modules
        result.extra["exact_composition"] = ref.record["exact_composition"]

    def export(self, result: AdaptResult, out: Path, merge: bool = False,
               export_rule: str | MergeSpec | None = None) -> Path:
        """Write `result` as an adapter folder composed by `export_rule` (default: the search's
        rule; PEFT's merges: `engine/merge.py`), and with `merge` also OUT-merged."""
        spec = as_spec(result.rule if export_rule is None else export_rule)
        pos = {m.name: i for i, m in enumerate(self.hub_modules)}
        if result.factors is not None:  # refined factors: exported as they are, in the rule refined
            refined = result.extra["refine"]["rule"]
            if spec.rule != refined:
                raise ValueError(f"this result's factors were refined as a {refined!r} adapter; it "
                                 f"cannot be exported with rule {spec.rule!r}")
            factors = result.factors
        else:
            factors = compose_factors(self.stack, [pos[m.name] for m in result.modules], result.weights, spec,
                                      model=self.net, allow_pickle=self.config.allow_pickle)
        write_adapter(out, factors, self.model_name, result.metadata(self.model_name, self.fingerprint, spec))
        result.out_dir = out
        if merge:
            merge_adapter(self.model_folder, out, out.with_name(out.name + "-merged"))
        return out

    def close(self) -> None:
        self.evaluator.close()


def _progress(enabled: bool, total: int, task: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"adapt {task}", unit="eval")


def adapt(model: str | Path, hub: str | Path, examples, out: str | Path | None = None,
          modules: int | Sequence[str] | None = None, config: SearchConfig | None = None,
          engine_config: EngineConfig | None = None, merge: bool = False, progress: bool = True,
          export_rule: str | MergeSpec | None = None, **options) -> AdaptResult:
    """Search composition weights for `examples` and (optionally) export the adapter to `out`.

    config: the search (budget, seed, optimizer, select, ...); engine_config: how the engine
    computes (rule, backend, dtype, ...). `options`: fields of either, as a shortcut
    (`adapt(..., budget=40, seed=1, rule="linear")`). export_rule: how `out` composes the
    weights found, e.g. `MergeSpec("ties", density=0.3)` (default: the search's rule)."""
    export = None if export_rule is None else as_spec(export_rule)  # before loading anything
    from dataclasses import fields

    search_names = {f.name for f in fields(SearchConfig)}
    search_opts = {k: v for k, v in options.items() if k in search_names}
    config = replace(config or SearchConfig(), **search_opts)
    exs = load_examples(examples)  # validate before loading anything heavy
    engine_opts = {k: v for k, v in options.items() if k not in search_names}
    engine = Engine(model, hub, (engine_config or EngineConfig()).with_options(**engine_opts))
    try:
        return engine.adapt(exs, task=Path(out).name if out else "task", modules=modules,
                            config=config, out=out, merge=merge, progress=progress,
                            export_rule=export)
    finally:
        engine.close()
