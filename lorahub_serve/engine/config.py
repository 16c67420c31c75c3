"""How an `Engine` computes, declared once: `EngineConfig` (frozen, validated on creation) and
its command-line form `add_engine_arguments`. The CLIs, `adapt()`, the cluster's workers,
`run_adapt_batch` and the serve command's adaptation workers all take this one object."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from lorahub_serve.choices import BACKENDS, DTYPES, RULES, Backend, Dtype, Rule, check


@dataclass(frozen=True)
class EngineConfig:
    rule: Rule = "lorahub"  # composition rule (design.md): the paper's, or the exact sum of deltas
    backend: Backend = "auto"  # LoRA kernels: Triton on CUDA, torch on CPU ("auto")
    dtype: Dtype = "auto"  # model and hub dtype; "auto": bf16 on CUDA and on CPUs with native bf16, else fp32
    token_budget: int | None = None  # padded tokens per micro-batch (None: 2048 CPU, 8192 CUDA)
    truncate: bool = False  # cut over-long prompts from the left instead of refusing them
    allow_pickle: bool = False  # accept .bin (pickle) hub adapters

    def __post_init__(self):
        check(self.rule, RULES, "rule")
        check(self.backend, BACKENDS, "backend")
        check(self.dtype, DTYPES, "dtype")
        if self.token_budget is not None and (not isinstance(self.token_budget, int) or self.token_budget < 1):
            raise ValueError(f"token_budget must be a positive integer (tokens), got {self.token_budget!r}")

    def with_options(self, **options) -> EngineConfig:
        """A copy with `options` (field names) replaced; an unknown name is a clear error."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"unknown engine options {unknown}; EngineConfig has {sorted(names)}")
        return replace(self, **options) if options else self

    @classmethod
    def from_args(cls, a) -> EngineConfig:
        """From the arguments `add_engine_arguments` declared."""
        return cls(**{f.name: getattr(a, f.name) for f in fields(cls)})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def add_engine_arguments(p) -> None:
    """--rule, --backend, --dtype, --token-budget, --truncate, --allow-pickle."""
    d = EngineConfig()
    p.add_argument("--rule", choices=RULES, default=d.rule, help="composition rule")
    p.add_argument("--backend", choices=BACKENDS, default=d.backend, help="LoRA kernels (auto: Triton on CUDA)")
    p.add_argument("--dtype", choices=DTYPES, default=d.dtype,
                   help="model and hub dtype (auto: bfloat16 on CUDA and on CPUs with AVX512-BF16/AMX, "
                        "float32 elsewhere; float32 for bit-stable runs)")
    p.add_argument("--token-budget", type=int, default=d.token_budget,
                   help="padded tokens per micro-batch (default: 2048 on CPU, 8192 on CUDA)")
    p.add_argument("--truncate", action="store_true", help="truncate over-long examples instead of failing")
    p.add_argument("--allow-pickle", action="store_true", help="accept .bin (pickle) adapters you trust")
