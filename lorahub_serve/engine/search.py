"""Gradient-free search of composition weights with nevergrad.

The search sees only a function from a batch of weight vectors [P, K] to few-shot losses [P];
it knows nothing of models, kernels or clusters. Objective = loss + l1 · mean|w| (the paper's;
with layer groups, `SearchConfig.groups` = G, a candidate is G·K weights and the mean runs over
all of them).

Population optimisers ("cma" default, "de") run in phases, each one batch or more:
1. start: w = 0 and the K one-hot vectors (each module alone at weight 1); when those K losses
   are already known (`--select loss` scored every module alone to choose K), only w = 0 is
   evaluated and the known losses are told with it, so no module is evaluated alone twice;
2. the population search, centred on the best point so far, with its step size `sigma` stated
   in weight units (default 0.1: around a module at weight 1, steps of 0.3 in 20 directions at
   once broke it, steps of 0.1 refined it; bench/search_compare.py), each generation asked at
   once, evaluated as one batch, then told.
The result is the best evaluated candidate, so it is never worse than the best start point.

Why the start: on a bounded `ng.p.Array` nevergrad's CMA starts with σ = range/6 × 0.15 ≈ 0.075
in 20 dimensions, and after 40 evaluations no candidate comes near one module at weight 1.
Here CMA works on an unbounded array whose standardised unit is `sigma`, and candidates are
clipped to ±bound when evaluated.

"ngopt" is the reference's sequential `NGOpt` loop from w = 0, one candidate at a time (at
budget 40 in 20 dimensions NGOpt picks COBYLA); the optimiser that ran is recorded.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from lorahub_serve.choices import OPTIMIZERS, Optimizer

OptimizerName = Optimizer  # the name search.py has always used


@dataclass(frozen=True)
class SearchConfig:
    budget: int = 40  # candidate evaluations, the start batch included
    seed: int = 0
    bound: float = 1.5  # |w| <= bound
    l1: float = 0.05
    contrast: float = 0.0  # weight of the option term (engine/objective.py): examples with options
    # also score their other options, so one label for every question is not a cheap optimum
    optimizer: OptimizerName = "cma"
    popsize: int | None = None  # population optimisers; default `population(k)`
    sigma: float = 0.1  # CMA-ES initial step size, in weight units (bench/search_compare.py)
    onehot_start: bool = True  # population optimisers: first evaluate w = 0 and the one-hots
    select: str = "loss"  # which K hub modules: "loss" (measured default) | "random" (the paper's) |
    # "retrieve" (engine/selection.py)
    groups: int = 1  # G layer groups, a weight per module per group (engine/layer_groups.py): a
    # candidate is G·K numbers, group-major; 1 is the paper's global w

    def __post_init__(self):
        if not isinstance(self.budget, int) or self.budget < 1:
            raise ValueError(f"budget must be an integer >= 1 (candidate evaluations), got {self.budget!r}")
        from lorahub_serve.engine.selection import check_select

        check_select(self.select)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not self.bound > 0:
            raise ValueError(f"bound must be > 0, got {self.bound}")
        if not (self.sigma > 0 and math.isfinite(self.sigma)):
            raise ValueError(f"sigma must be a positive step size in weight units (e.g. 0.3), got {self.sigma}")
        if not (self.contrast >= 0 and math.isfinite(self.contrast)):
            raise ValueError(f"contrast must be a finite weight >= 0, got {self.contrast}")
        if not isinstance(self.groups, int) or self.groups < 1:
            raise ValueError(f"groups must be an integer >= 1 (layer groups, --weights per-layer-group:G), "
                             f"got {self.groups!r}")
        if self.popsize is not None and self.popsize < 2:
            raise ValueError(f"popsize must be >= 2, got {self.popsize}")

    def start_size(self, k: int) -> int:
        """Evaluations of the start batch (w = 0 and the K one-hots), within the budget."""
        return min(self.budget, k + 1) if self.onehot_start and self.optimizer != "ngopt" else 0

    def population(self, k: int) -> int:
        """Population size: the one given, else small enough to leave at least four updates in
        what the start leaves of the budget, and at most CMA's usual 4 + 3·ln K."""
        if self.optimizer == "ngopt":
            return 1
        if self.popsize:
            return self.popsize
        rest = self.budget - self.start_size(k)
        return max(4, min(4 + int(3 * math.log(max(k * self.groups, 1))), rest // 4))

    def describe(self, k: int) -> dict:
        """What ran, for lorahub.json and reports."""
        return {**asdict(self), "population": self.population(k), "start_evaluations": self.start_size(k)}


@dataclass
class Candidate:
    """One point to evaluate. `value`: the weights [K] as evaluated (within ±bound); `handle`:
    the optimiser's own candidate, told back (None for start points)."""

    value: np.ndarray
    handle: object = None


@dataclass
class SearchState:
    """One task's optimiser and bookkeeping; picklable, so a job can resume it. `k` modules; a
    candidate is `dim` = G·K weights (config.groups), group-major."""

    k: int
    config: SearchConfig
    optimizer: object = None
    evaluations: int = 0
    best_weights: np.ndarray | None = None
    best_objective: float = math.inf
    best_loss: float = math.inf
    history: list[float] = field(default_factory=list)  # objective (loss + L1) of each evaluation
    optimizer_name: str = ""
    start_losses: np.ndarray | None = None  # [1 + K]: w = 0, then each module alone
    # [K] each module alone, known before the search (the selection pass's): the start batch
    # tells them instead of evaluating them again. Plain defaults are class attributes, so a
    # state pickled before these fields existed still resumes.
    known_onehot: np.ndarray | None = None
    reused_evaluations: int = 0  # losses told from `known_onehot`, counted in `evaluations`

    def __post_init__(self):
        cfg = self.config
        if self.known_onehot is not None and np.shape(self.known_onehot) != (self.k,):
            raise ValueError(f"known_onehot must hold one loss per module ([{self.k}]), "
                             f"got shape {np.shape(self.known_onehot)}")
        if cfg.optimizer == "ngopt" and self.optimizer is None:
            import nevergrad as ng

            param = ng.p.Array(init=np.zeros(self.dim), lower=-cfg.bound, upper=cfg.bound)
            param.random_state = np.random.RandomState(cfg.seed)
            self.optimizer = ng.optimizers.NGOpt(parametrization=param, budget=cfg.budget)
            inner = self.optimizer.optim
            self.optimizer_name = f"NGOpt -> {getattr(inner, 'method', type(inner).__name__)}"
        elif not self.optimizer_name:
            self.optimizer_name = self._population_name()

    def _population_name(self) -> str:
        cfg = self.config
        name = {"cma": f"CMA-ES (popsize {cfg.population(self.k)}, sigma {cfg.sigma})",
                "de": f"DE (popsize {cfg.population(self.k)})"}[cfg.optimizer]
        if not cfg.start_size(self.k):
            return name
        return f"one-hot start + {name}"

    @property
    def dim(self) -> int:
        """Numbers per candidate: G·K (the modules' weights in each layer group)."""
        return self.k * self.config.groups

    @property
    def done(self) -> bool:
        return self.evaluations >= self.config.budget

    @property
    def in_start(self) -> bool:
        return self.evaluations < self.config.start_size(self.k)

    def ask(self) -> list[Candidate]:
        """The next generation (fewer at the end of the budget)."""
        left = self.config.budget - self.evaluations
        if self.in_start:
            points = self._start_points()
            if self.known_onehot is not None:
                points = points[:1]  # w = 0 only; `tell` adds the known one-hots
            return [Candidate(w) for w in points]
        if self.optimizer is None:
            self.optimizer = self._make_population_optimizer()
        n = min(self.config.population(self.k), left)
        cands = [self.optimizer.ask() for _ in range(n)]
        bound = self.config.bound
        return [Candidate(np.clip(np.asarray(c.value, dtype=np.float64), -bound, bound), c) for c in cands]

    def _start_points(self) -> np.ndarray:
        """[S, G·K]: w = 0, then the one-hots (each module alone at weight 1 in every group), cut
        to the start batch's size S."""
        onehots = np.tile(np.eye(self.k), self.config.groups)
        return np.vstack([np.zeros((1, self.dim)), onehots])[: self.config.start_size(self.k)]

    def _with_known_onehots(self, candidates: list, losses: np.ndarray) -> tuple[list, np.ndarray]:
        """The whole start batch: the evaluated w = 0, then the one-hots with their known losses."""
        onehots = self._start_points()[1:]
        known = np.asarray(self.known_onehot, dtype=np.float64)[: len(onehots)]
        self.reused_evaluations += len(onehots)
        return [*candidates, *(Candidate(w) for w in onehots)], np.concatenate([losses, known])

    def _make_population_optimizer(self):
        """Centred on the best start point (or w = 0); unbounded, so σ is `sigma` weight units."""
        import nevergrad as ng

        cfg = self.config
        centre = self.best_weights if self.best_weights is not None else np.zeros(self.dim)
        param = ng.p.Array(init=np.asarray(centre, dtype=np.float64)).set_mutation(sigma=cfg.sigma)
        param.random_state = np.random.RandomState(cfg.seed)
        rest = max(1, cfg.budget - self.evaluations)
        family = (ng.families.ParametrizedCMA(popsize=cfg.population(self.k)) if cfg.optimizer == "cma"
                  else ng.families.DifferentialEvolution(popsize=cfg.population(self.k)))
        return family(param, budget=rest)

    def tell(self, candidates: list, losses: np.ndarray) -> None:
        losses = np.asarray(losses, dtype=np.float64)
        if self.in_start:
            if self.known_onehot is not None:
                candidates, losses = self._with_known_onehots(candidates, losses)
            self.start_losses = losses.copy()
        for cand, loss in zip(candidates, losses):
            w = np.asarray(cand.value, dtype=np.float64)
            loss = float(loss)
            objective = loss + self.config.l1 * float(np.mean(np.abs(w))) if math.isfinite(loss) else 1e9
            handle = getattr(cand, "handle", cand)
            if handle is not None and self.optimizer is not None:
                with warnings.catch_warnings():
                    # pycma flags its own injected mean as "orphanated": nevergrad hands it back
                    # through a float round trip, so pycma no longer recognises it. Harmless.
                    warnings.filterwarnings("ignore", message="orphanated injected solution")
                    self.optimizer.tell(handle, objective)
            self.evaluations += 1
            self.history.append(objective)
            if objective < self.best_objective:
                self.best_objective, self.best_loss, self.best_weights = objective, loss, w.copy()


LossFn = Callable[[np.ndarray], np.ndarray]  # weights [P, G·K] (G = 1: [P, K]) -> losses [P]


def run_search(loss_fn: LossFn, k: int, config: SearchConfig,
               on_generation: Callable[[SearchState], None] | None = None,
               state: SearchState | None = None) -> SearchState:
    """Run (or resume) one task's search to its budget; returns the final state."""
    state = state or SearchState(k, config)
    while not state.done:
        cands = state.ask()
        weights = np.stack([c.value for c in cands])
        state.tell(cands, loss_fn(weights))
        if on_generation is not None:
            on_generation(state)
    return state
