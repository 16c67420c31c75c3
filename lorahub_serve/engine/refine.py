"""Compose, then refine (`adapt --refine N`): gradient steps on the few-shot examples, starting
from the composition the search found.

Two forms (`RefineConfig.on`):
- "weights": Adam on the composition weights w ([K], or [G, K] with layer groups) only, through
  the search's rule (the factors are `export.compose_factors` of w, differentiable in w), with the
  search's objective: loss + l1 · mean|w|. The adapter stays a weighted sum of hub modules, so
  lorahub.json's weights describe it exactly.
- "factors": Adam on the exported adapter's own A, B (every layer, the exported rank and rule),
  starting from the composition; objective: the loss. The adapter is no longer a weighted sum of
  hub modules: lorahub.json says so (`exact_composition: false`).

The guard against fitting 5 examples (`guard`): "loo" (default) chooses how many of the N steps
to keep by leave-one-out. For each example i, N steps are taken on the other examples from the
composition, and after each step i's own loss is measured; the step count kept, n*, minimises
the mean held-out loss over the E folds, step 0 (the composition unrefined) included, so
refinement that does not generalise to an unseen shot is not kept. Then n* steps are taken on
all examples. Cost: (E + 1)·N forward-backward passes over the examples. "none" keeps all N
steps (for measurement; it fits the shots). `loss_before`/`loss_after` are the plain few-shot loss
(mean output-token cross-entropy, the search's `best_loss`) of the composition and of the result.

The passes run on the engine's own model (its `MultiLoraLinear` layers, with no routing, are the
base layers); one LoRA term per layer is added by a forward hook while refinement runs
(`refine_steps.py`; this module is the light configuration, importable without torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

RefineOn = Literal["weights", "factors"]
Guard = Literal["loo", "none"]
REFINE_ON: tuple[str, ...] = ("weights", "factors")
GUARDS: tuple[str, ...] = ("loo", "none")
DEFAULT_LR = {"weights": 1e-2, "factors": 1e-3}  # factors: the hub's own training lr (hub/train.py)


@dataclass(frozen=True)
class RefineConfig:
    steps: int = 0  # N gradient steps asked (0: no refinement, the default)
    on: RefineOn = "weights"
    lr: float | None = None  # Adam's; None: DEFAULT_LR[on]
    guard: Guard = "loo"

    def __post_init__(self):
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0:
            raise ValueError(f"--refine must be an integer >= 0 (gradient steps after the search; 0: "
                             f"none), got {self.steps!r}")
        if self.on not in REFINE_ON:
            raise ValueError(f"--refine-on must be one of {', '.join(REFINE_ON)}, got {self.on!r}")
        if self.guard not in GUARDS:
            raise ValueError(f"--refine-guard must be one of {', '.join(GUARDS)}, got {self.guard!r}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--refine-lr must be a positive finite learning rate, got {self.lr!r}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.on]
