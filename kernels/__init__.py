"""Triton kernels for batched LoRA composition, each with a plain-torch `*_ref` twin.

Layout and maths: docs/kernels_api.md. The engine calls `lora_delta`; the four ops are its
building blocks (lorahub rule: compose_shrink → compose_expand; linear rule:
stacked_shrink → stacked_expand).
"""

from lorahub_serve.kernels.compose_expand import compose_expand, compose_expand_ref
from lorahub_serve.kernels.compose_shrink import compose_shrink, compose_shrink_ref
from lorahub_serve.kernels.dispatch import Backend, Rule, available_backends, lora_delta
from lorahub_serve.kernels.stacked_expand import stacked_expand, stacked_expand_ref
from lorahub_serve.kernels.stacked_shrink import stacked_shrink, stacked_shrink_ref

__all__ = [
    "Backend",
    "Rule",
    "available_backends",
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
