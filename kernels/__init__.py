"""Triton kernels for batched LoRA composition, each with a plain-torch `*_ref` twin.

Layout and maths: docs/kernels_api.md. The engine calls `lora_delta`; the five ops are its
building blocks (lorahub rule: compose_shrink → compose_expand, or both fused in compose_delta;
linear rule: stacked_shrink → stacked_expand).
"""

import importlib

from lorahub_serve.kernels.dispatch import Backend, Rule, available_backends, lora_delta

# The kernels (and Triton with them) load on first use: the CPU engine needs only `lora_delta`.
# Import them from this package (`from lorahub_serve.kernels import compose_shrink`), not from
# their modules, which share their names.
_LAZY = {name: mod for mod in ("compose_delta", "compose_expand", "compose_shrink", "stacked_expand",
                                "stacked_shrink")
         for name in (mod, f"{mod}_ref")}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'lorahub_serve.kernels' has no attribute {name!r}")
    mod = _LAZY[name]
    loaded = importlib.import_module(f"lorahub_serve.kernels.{mod}")
    # importing binds the submodule under its own name, which is also the kernel's: rebind both
    # names to the functions, as eager imports would
    globals().update({mod: getattr(loaded, mod), f"{mod}_ref": getattr(loaded, f"{mod}_ref")})
    return globals()[name]

__all__ = [
    "Backend",
    "Rule",
    "available_backends",
    "compose_delta",
    "compose_delta_ref",
    "compose_expand",
    "compose_expand_ref",
    "compose_shrink",
    "compose_shrink_ref",
    "lora_delta",
    "stacked_expand",
    "stacked_expand_ref",
    "stacked_shrink",
    "stacked_shrink_ref",
]
