"""PEFT's merges of same-rank LoRA modules, for exported and served compositions (the search
keeps "lorahub" or "linear"). Rule `f` ∈ {ties, dare_linear, dare_ties, magnitude_prune} is
`peft.utils.merge_utils.f`, applied per layer as `PeftModel.add_weighted_adapter(...,
combination_type=f)` applies it (peft 0.21.2, `_generalized_task_arithmetic_weighted_adapter`):

    A' = f([A₁ … A_K], [√|wₖsₖ|·sign(wₖsₖ)]ₖ),  B' = f([B₁ … B_K], [√|wₖsₖ|]ₖ)   rank r, alpha r

over the modules that adapt the layer (sₖ: module k's scaling), layers in the base model's
`named_modules` order, A before B. All modules share one rank r. With one module PEFT falls back
to its weighted sum (no pruning), and so does this. DARE prunes at random with torch's CPU
generator: it is seeded with `seed` at the start of that loop (a forked RNG state, one merge at a
time), so the factors are PEFT's when its generator is seeded so at the start of its loop.
Factors are read from the module files and merged in fp32.
"""

from __future__ import annotations

import math
import threading
import warnings
from dataclasses import asdict, dataclass

import torch

from lorahub_serve.choices import EXPORT_RULES, MERGE_RULES, SIGN_METHODS, ExportRule, SignMethod
from lorahub_serve.engine.hub import ModuleInfo, load_module_tensors
from lorahub_serve.formats import peft_layer

# Which rules take each parameter, and its value when a rule takes it and none is given.
APPLIES = {"density": MERGE_RULES, "majority_sign_method": ("ties", "dare_ties"),
           "seed": ("dare_linear", "dare_ties")}
DEFAULTS = {"density": 0.5, "majority_sign_method": "total", "seed": 0}
_RNG = threading.Lock()  # DARE seeds torch's global CPU generator: one merge at a time


@dataclass(frozen=True)
class MergeSpec:
    """How a composition is exported or served: `rule` and the parameters of PEFT's merges.

    density: ties, dare_*, magnitude_prune — fraction of each factor's entries kept, in (0, 1]
        (default 0.5; 1 prunes nothing); majority_sign_method: ties, dare_ties — "total" (sum of
        values, default) or "frequency" (count of signs); seed: dare_* — seed of the random
        pruning (default 0). A parameter the rule does not take must stay None; one it takes
        and is not given gets its default, so equal specs compare (and hash) equal."""

    rule: ExportRule = "lorahub"
    density: float | None = None
    majority_sign_method: SignMethod | None = None
    seed: int | None = None

    def __post_init__(self):
        if self.rule not in EXPORT_RULES:
            raise ValueError(f"rule must be one of {', '.join(EXPORT_RULES)}; got {self.rule!r}")
        for name, rules in APPLIES.items():
            value = getattr(self, name)
            if self.rule not in rules and value is not None:
                raise ValueError(f"{name} does not apply to rule {self.rule!r} (got {value!r}); it "
                                 f"applies to {', '.join(rules)}: drop it or choose one of those")
            if self.rule in rules and value is None:
                object.__setattr__(self, name, DEFAULTS[name])
        d = self.density
        if d is not None:
            if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 < d <= 1:
                raise ValueError(f"density must be a number in (0, 1] (the fraction of each factor's "
                                 f"entries kept; 1 keeps all), got {d!r}")  # NaN fails 0 < d
            object.__setattr__(self, "density", float(d))
        m = self.majority_sign_method
        if m is not None and m not in SIGN_METHODS:
            raise ValueError(f"majority_sign_method must be one of {', '.join(SIGN_METHODS)}; got {m!r}")
        s = self.seed
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2 ** 63):
            raise ValueError(f"seed must be an integer in [0, 2**63), got {s!r}")

    @property
    def is_merge(self) -> bool:
        """Whether the rule is one of PEFT's merges (this module), not lorahub or linear."""
        return self.rule in MERGE_RULES

    def params(self) -> dict:
        """The parameters the rule takes, with their values (empty for lorahub and linear)."""
        return {k: v for k, v in asdict(self).items() if k != "rule" and v is not None}

    def to_dict(self) -> dict:
        """rule, density, majority_sign_method, seed (None where the rule takes none)."""
        return asdict(self)


def as_spec(rule: str | MergeSpec) -> MergeSpec:
    """`rule` as a `MergeSpec` (a rule name gets its parameters' defaults)."""
    return rule if isinstance(rule, MergeSpec) else MergeSpec(rule)


def common_rank(ranks: list[int], rule: str) -> int:
    """The one rank of modules merged by `rule` (a PEFT merge), else a ValueError naming them."""
    if len(set(ranks)) != 1:
        raise ValueError(f"rule {rule!r} merges modules of one rank (PEFT's add_weighted_adapter); "
                         f"these have ranks {list(ranks)}: choose modules of one rank, or the "
                         "'lorahub' or 'linear' rule")
    return ranks[0]


def merge_factors(model: torch.nn.Module, modules: list[ModuleInfo], weights, spec: MergeSpec,
                  allow_pickle: bool = False) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """layer -> (A [r, d_in], B [d_out, r]) fp32 of `modules` [K] merged with `weights` [K] by
    `spec` (a PEFT merge; see the module docstring). `model`: the base model, for layer order."""
    from peft.utils import merge_utils

    if not spec.is_merge:
        raise ValueError(f"merge_factors: rule {spec.rule!r} is not one of {', '.join(MERGE_RULES)}")
    common_rank([m.rank for m in modules], spec.rule)
    factors = [_factors(m, allow_pickle) for m in modules]  # per module: layer -> {"A", "B"}
    wanted = set().union(*factors)
    order = [name for name, _ in model.named_modules() if name in wanted]
    if len(order) != len(wanted):
        raise ValueError(f"the modules adapt layers the base model lacks: {sorted(wanted - set(order))[:3]}")
    # PEFT's weighting: √|w·s| on both sides, the sign on A only
    ws = [float(w) * m.scaling for w, m in zip(weights, modules)]
    w_a = [math.sqrt(abs(x)) * (1 if x >= 0 else -1) for x in ws]
    w_b = [math.sqrt(abs(x)) for x in ws]
    if len(modules) == 1:  # PEFT: "if there is only one adapter, we can only use linear merging"
        fn, kw = merge_utils.task_arithmetic, {}
    else:
        fn, kw = getattr(merge_utils, spec.rule), spec.params()
        kw.pop("seed", None)
    out = {}
    with _RNG, torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The density .* no pruning will be performed")
        torch.default_generator.manual_seed(spec.seed or 0)  # DARE's draws; the others draw none
        for layer in order:
            have = [k for k, f in enumerate(factors) if layer in f]
            a = fn([factors[k][layer]["A"] for k in have], torch.tensor([w_a[k] for k in have]), **kw)
            b = fn([factors[k][layer]["B"] for k in have], torch.tensor([w_b[k] for k in have]), **kw)
            out[layer] = (a, b)
    return out


def _factors(module: ModuleInfo, allow_pickle: bool) -> dict[str, dict[str, torch.Tensor]]:
    """layer -> {"A": [r, d_in], "B": [d_out, r]} fp32, as stored (scaling not applied)."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in load_module_tensors(module, allow_pickle).items():
        layer, which = peft_layer(key)
        if layer:
            layers.setdefault(layer, {})[which] = t.float()
    for layer, ab in layers.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"adapter {module.name!r} ({module.path}): layer {layer!r} has lora_"
                             f"{''.join(ab)} but not both lora_A and lora_B")
    return layers
