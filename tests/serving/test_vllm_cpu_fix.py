"""vLLM's CPU LoRA shrink, patched: a row without an adapter (index -1) gets no LoRA term."""

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed here")


def test_rows_without_an_adapter_get_no_lora_term():
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    from lorahub_serve.serving import vllm_cpu_fix  # noqa: F401 - applies the patch

    assert punica_cpu.bgmv_shrink is lora_ops.bgmv_shrink  # the wrapper calls the fixed op
    torch.manual_seed(0)
    x = torch.randn(5, 16)
    a = torch.randn(2, 1, 4, 16)  # [slots, 1, rank, in]
    idx = torch.tensor([-1, 0, 1, -1, 1])
    out = torch.full((5, 4), 7.0)
    lora_ops.bgmv_shrink(x, a, out, idx, 0.5)
    want = torch.stack([torch.zeros(4) if i < 0 else 0.5 * a[i, 0] @ x[r] for r, i in enumerate(idx)])
    torch.testing.assert_close(out, want)
    prefill = torch.full((5, 4), 7.0)  # sgmv: one index per sequence, lengths 2 and 3
    lora_ops.sgmv_shrink(x, a, prefill, torch.tensor([0, 2]), torch.tensor([2, 3]),
                         torch.tensor([-1, 1]), 2, 3, 5, 0.5)
    assert prefill[:2].abs().max() == 0 and prefill[2:].abs().min() > 0
