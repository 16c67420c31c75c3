"""Every choice list of the package as one `Literal` each; CLIs and validators read them with
`typing.get_args`, so no list of strings is typed twice. Light: imports nothing heavy, so the
command line can build its parsers without torch. (`kernels/dispatch.py` states Rule and Backend
for the kernel layer, which imports nothing of the package; a test keeps the two equal.)"""

from __future__ import annotations

from typing import Literal, get_args

Rule = Literal["lorahub", "linear"]  # A = Σ wA, B = Σ wB (the paper's) | ΔW = Σ w·BA exactly
# PEFT's merges of same-rank modules (engine/merge.py): exported and served adapters only, never the search
MergeRule = Literal["ties", "dare_linear", "dare_ties", "magnitude_prune"]
ExportRule = Literal[Rule, MergeRule]  # the rule of an exported or served composition
SignMethod = Literal["total", "frequency"]  # ties, dare_ties: how the majority sign is elected
Backend = Literal["auto", "torch", "triton"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
TrainDtype = Literal["float32", "bfloat16"]  # hub training: fp32, or bf16 autocast
Optimizer = Literal["cma", "de", "ngopt"]
Select = Literal["random", "loss", "retrieve"]
Generator = Literal["auto", "vllm", "engine"]
Suite = Literal["bbh", "headroom"]

RULES: tuple[str, ...] = get_args(Rule)
MERGE_RULES: tuple[str, ...] = get_args(MergeRule)
EXPORT_RULES: tuple[str, ...] = get_args(ExportRule)
SIGN_METHODS: tuple[str, ...] = get_args(SignMethod)
BACKENDS: tuple[str, ...] = get_args(Backend)
DTYPES: tuple[str, ...] = get_args(Dtype)
TRAIN_DTYPES: tuple[str, ...] = get_args(TrainDtype)
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
SELECT_MODES: tuple[str, ...] = get_args(Select)
GENERATORS: tuple[str, ...] = get_args(Generator)
SUITES: tuple[str, ...] = get_args(Suite)


def check(value: str, options: tuple[str, ...], what: str) -> str:
    """`value` when it is one of `options`, else a ValueError that names `what` and the options."""
    if value not in options:
        raise ValueError(f"{what} must be one of {', '.join(options)}; got {value!r}")
    return value
