"""The attach handle's routing context: set for the block, reset on exit even when it raises."""

import numpy as np
import pytest
import torch

from lorahub_serve.engine.hub import read_manifest, stack_modules
from lorahub_serve.engine.multilora import attach
from lorahub_serve.models import load_base


def test_route_sets_and_always_resets(tiny_llama_dir, tiny_llama_hub):
    net, _ = load_base(tiny_llama_dir)
    stack = stack_modules(net, read_manifest(tiny_llama_hub))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        base = net(input_ids=ids).logits
        handle = attach(net, stack, backend="torch")
        k = len(stack.modules)
        try:
            with handle.route(np.arange(k)[None], np.full((1, k), 0.7)) as routing:
                assert routing is handle.routing and routing.weights.dtype == torch.float32
                routing.row_cand = torch.zeros(1, dtype=torch.long)
                adapted = net(input_ids=ids).logits
            assert handle.routing.row_cand is None and handle.routing.module_idx is None
            assert not torch.allclose(adapted, base)  # the composition changed the output
            ones = np.ones((1, k))
            with pytest.raises(RuntimeError, match="inside"), handle.route(np.arange(k)[None], ones) as r:
                r.row_cand = torch.zeros(1, dtype=torch.long)
                raise RuntimeError("inside")
            assert handle.routing.row_cand is None and handle.routing.weights is None
            torch.testing.assert_close(net(input_ids=ids).logits, base)  # the plain base model again
            with pytest.raises(ValueError, match=r"must both be \[C, K\]"), handle.route(np.arange(k), np.ones(k)):
                pass
            for bad in (-1, k):  # the one range check, for the evaluator and generation alike
                idx = np.arange(k)[None].copy()
                idx[0, 0] = bad
                with pytest.raises(ValueError, match=rf"module_idx must lie in \[0, {k}\)"), handle.route(idx, ones):
                    pass
        finally:
            handle.detach()
