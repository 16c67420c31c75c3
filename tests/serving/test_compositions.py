"""Compositions named in a request: checks, content names, the store cache (no server)."""

import asyncio

import pytest
import torch
from safetensors.torch import load_file

from lorahub_serve import testing
from lorahub_serve.serving.compositions import CompositionError, Compositions
from lorahub_serve.serving.store import AdapterStore, BaseModelShapes


@pytest.fixture(scope="module")
def comps(tmp_path_factory):
    d = tmp_path_factory.mktemp("comps")
    model, _ = testing.tiny_llama(d / "m", hidden=128)
    hub = testing.random_hub(model, d / "hub", n=4, ranks=(4, 2), scale=3.0)
    (d / "store").mkdir()
    store = AdapterStore(d / "store", BaseModelShapes.from_folder(d / "m"), 8)
    return Compositions(store, hub, d / "m", "base", max_rank=8, max_cached=2)


@pytest.mark.parametrize("spec, model, message", [
    ({"modules": {"task0": 1}}, "other", "must be the base model's name 'base'"),
    ([1, 2], "base", "must be an object"),
    ({"modules": {}}, "base", "names 0 modules"),
    ({"modules": {"task0": 1}, "scale": 2}, "base", "unknown field"),
    ({"modules": {"x": 1}}, "base", r"unknown hub module\(s\) \['x'\]; this hub has: task0"),
    ({"modules": {"task0": float("nan")}}, "base", "finite number"),
    ({"modules": {"task0": 11}}, "base", "finite number"),
    ({"modules": {"task0": True}}, "base", "finite number"),
    ({"modules": {"task0": 1}, "rule": "mean"}, "base", "'lorahub' or 'linear'"),
    ({"modules": {"task0": 1, "task1": 1, "task2": 1}, "rule": "linear"}, "base",  # 4 + 2 + 4
     r"rank 10 \(rule 'linear', 3 module\(s\) of rank up to 4\), above .*--max-lora-rank 8"),
])
def test_bad_specifications_name_the_problem(comps, spec, model, message):
    with pytest.raises(CompositionError, match=message):
        comps.check(spec, model)


def test_content_names_cache_and_eviction(comps):
    async def scenario():
        a, _ = await comps.ensure({"modules": {"task0": 0.5, "task1": -1.0}}, "base")
        same, _ = await comps.ensure({"modules": {"task1": -1, "task0": 0.5}, "rule": "lorahub"}, "base")
        b, _ = await comps.ensure({"modules": {"task0": 0.5, "task1": -1.0}, "rule": "linear"}, "base")
        c, evicted = await comps.ensure({"modules": {"task2": 1.0}}, "base")
        return a, same, b, c, evicted

    a, same, b, c, evicted = asyncio.run(scenario())
    assert a == same and a.startswith("lh-") and len({a, b, c}) == 3
    assert evicted == [a] and not comps.store.exists(a)  # at most 2 cached, least recent first
    assert comps.store.inspect(b).rank == 6 and comps.store.inspect(c).rank == 4  # linear: 4 + 2


def test_linear_rank_is_the_sum_of_the_module_ranks(comps):
    """Mixed ranks 4 + 2 + 2 fit --max-lora-rank 8 (not 3 x 4, the padded rank)."""
    spec = {"modules": {"task0": 1.0, "task1": 0.5, "task3": -0.5}, "rule": "linear"}
    assert comps.check(spec, "base") == ("linear", ["task0", "task1", "task3"], [1.0, 0.5, -0.5])


def test_linear_rule_is_the_dense_sum_of_the_modules(comps):
    weights = {"task0": 0.6, "task1": -0.9}  # ranks 4 and 2
    name, _ = asyncio.run(comps.ensure({"modules": weights, "rule": "linear"}, "base"))
    got = load_file(comps.store.folder(name) / "adapter_model.safetensors")
    for layer in ("layers.0.self_attn.q_proj", "layers.1.self_attn.v_proj"):
        key = f"base_model.model.model.{layer}.lora_{{}}.weight"
        assert got[key.format("A")].shape[0] == 6
        want = 0
        for mod, w in weights.items():
            info = comps.modules[mod]
            t = load_file(info.path / "adapter_model.safetensors")
            want = want + w * info.alpha / info.rank * t[key.format("B")].double() @ t[key.format("A")].double()
        got_delta = got[key.format("B")].double() @ got[key.format("A")].double()
        torch.testing.assert_close(got_delta, want, rtol=1e-5, atol=1e-6)  # fp32 factors


def test_lorahub_rule_is_the_weighted_sum_of_factors(comps):
    weights = {"task1": 0.7, "task2": -0.4}  # ranks 2 and 4: the rank-2 one is zero-padded
    name, _ = asyncio.run(comps.ensure({"modules": weights}, "base"))
    got = load_file(comps.store.folder(name) / "adapter_model.safetensors")
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_{}.weight"
    want_a, want_b = torch.zeros_like(got[key.format("A")]), torch.zeros_like(got[key.format("B")])
    for mod, w in weights.items():
        info = comps.modules[mod]
        t = load_file(info.path / "adapter_model.safetensors")
        want_a[: info.rank] += w * t[key.format("A")]
        want_b[:, : info.rank] += w * info.alpha / info.rank * t[key.format("B")]
    torch.testing.assert_close(got[key.format("A")], want_a)
    torch.testing.assert_close(got[key.format("B")], want_b)
