"""Gradient-free search of composition weights with nevergrad.

The search sees only a function from a batch of weight vectors [P, K] to few-shot losses [P];
it knows nothing of models, kernels or clusters. Objective = loss + l1 · mean|w| (the paper's).

- optimizer "cma" (default): CMA-ES with population P; each generation is asked at once,
  evaluated as one batch, then told.
- optimizer "ngopt": the reference's sequential `NGOpt` loop, one candidate at a time. At
  budget 40 in 20 dimensions NGOpt picks COBYLA, so the paper's numbers came from COBYLA;
  the optimiser that actually ran is recorded in the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

OptimizerName = Literal["cma", "ngopt"]


@dataclass(frozen=True)
class SearchConfig:
    budget: int = 40  # candidate evaluations
    seed: int = 0
    bound: float = 1.5
    l1: float = 0.05
    optimizer: OptimizerName = "cma"
    popsize: int | None = None  # CMA-ES population; default 4 + 3·ln K

    def __post_init__(self):
        if not isinstance(self.budget, int) or self.budget < 1:
            raise ValueError(f"budget must be an integer >= 1 (candidate evaluations), got {self.budget!r}")
        if self.optimizer not in ("cma", "ngopt"):
            raise ValueError(f"optimizer must be 'cma' or 'ngopt', got {self.optimizer!r}")
        if not self.bound > 0:
            raise ValueError(f"bound must be > 0, got {self.bound}")
        if self.popsize is not None and self.popsize < 2:
            raise ValueError(f"popsize must be >= 2, got {self.popsize}")

    def population(self, k: int) -> int:
        if self.optimizer == "ngopt":
            return 1
        return self.popsize or 4 + int(3 * math.log(max(k, 1)))


@dataclass
class SearchState:
    """One task's optimiser and bookkeeping; picklable, so a job can resume it."""

    k: int
    config: SearchConfig
    optimizer: object = None
    evaluations: int = 0
    best_weights: np.ndarray | None = None
    best_objective: float = math.inf
    best_loss: float = math.inf
    history: list[float] = field(default_factory=list)  # objective of each evaluation, in order
    optimizer_name: str = ""

    def __post_init__(self):
        import nevergrad as ng

        if self.optimizer is None:
            param = ng.p.Array(init=np.zeros(self.k), lower=-self.config.bound, upper=self.config.bound)
            param.random_state = np.random.RandomState(self.config.seed)
            if self.config.optimizer == "cma":
                self.optimizer = ng.families.ParametrizedCMA(popsize=self.config.population(self.k))(
                    param, budget=self.config.budget)
                self.optimizer_name = f"CMA-ES (popsize {self.config.population(self.k)})"
            else:
                self.optimizer = ng.optimizers.NGOpt(parametrization=param, budget=self.config.budget)
                self.optimizer_name = f"NGOpt -> {type(self.optimizer.optim).__name__}"
                if hasattr(self.optimizer.optim, "method"):
                    self.optimizer_name = f"NGOpt -> {self.optimizer.optim.method}"

    @property
    def done(self) -> bool:
        return self.evaluations >= self.config.budget

    def ask(self) -> list:
        """The next generation (fewer at the end of the budget)."""
        n = min(self.config.population(self.k), self.config.budget - self.evaluations)
        return [self.optimizer.ask() for _ in range(n)]

    def tell(self, candidates: list, losses: np.ndarray) -> None:
        for cand, loss in zip(candidates, losses):
            w = np.asarray(cand.value, dtype=np.float64)
            loss = float(loss)
            objective = loss + self.config.l1 * float(np.mean(np.abs(w))) if math.isfinite(loss) else 1e9
            self.optimizer.tell(cand, objective)
            self.evaluations += 1
            self.history.append(objective)
            if objective < self.best_objective:
                self.best_objective, self.best_loss, self.best_weights = objective, loss, w.copy()


LossFn = Callable[[np.ndarray], np.ndarray]  # weights [P, K] -> losses [P]


def run_search(loss_fn: LossFn, k: int, config: SearchConfig,
               on_generation: Callable[[SearchState], None] | None = None,
               state: SearchState | None = None) -> SearchState:
    """Run (or resume) one task's search to its budget; returns the final state."""
    state = state or SearchState(k, config)
    while not state.done:
        cands = state.ask()
        weights = np.stack([np.asarray(c.value, dtype=np.float64) for c in cands])
        state.tell(cands, loss_fn(weights))
        if on_generation is not None:
            on_generation(state)
    return state
