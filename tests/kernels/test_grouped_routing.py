"""Per-layer-group weights ([C, G, K], `engine/layer_groups.py`) reach the Triton kernels as each
layer's group's [C, K] slice: the batched losses on the kernels equal the torch path's (on CUDA
natively, else under Triton's interpreter, as the rest of this folder)."""

import numpy as np
import pytest
import torch

from lorahub_serve import testing
from lorahub_serve.data import from_records
from lorahub_serve.engine.evaluator import Evaluator
from lorahub_serve.engine.hub import read_manifest, stack_modules
from lorahub_serve.kernels import available_backends
from lorahub_serve.models import load_base


@pytest.mark.skipif("triton" not in available_backends(), reason="needs CUDA or TRITON_INTERPRET=1")
@pytest.mark.parametrize("rule", ["lorahub", "linear"])
def test_grouped_losses_on_the_kernels_equal_the_torch_path(tiny_llama_dir, tiny_llama_hub, rule):
    torch.set_num_threads(1)
    w = np.random.default_rng(1).uniform(-1.5, 1.5, size=(3, 2, 4)).astype(np.float32)
    idx = np.tile(np.arange(4), (3, 1))
    out = {}
    for backend in ("torch", "triton"):
        model, tok = load_base(tiny_llama_dir)
        device = "cuda" if torch.cuda.is_available() else None
        if device:
            model.to(device)
        ev = Evaluator(model, tok, stack_modules(model, read_manifest(tiny_llama_hub)), rule=rule,
                       backend=backend, token_budget=64)
        ev.add_task("t", from_records(testing.FEW_SHOT[:3]))
        out[backend] = ev.losses(["t"] * 3, idx, w)
        ev.close()
    np.testing.assert_allclose(out["triton"], out["torch"], atol=1e-4)
    assert abs(out["torch"][0] - out["torch"][1]) > 1e-3  # the candidates differ (not vacuous)
