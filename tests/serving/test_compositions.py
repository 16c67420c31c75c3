"""Compositions named in a request: checks, content names, the store cache (no server)."""

import asyncio

import pytest
import torch
from safetensors.torch import load_file

from lorahub_serve import testing
from lorahub_serve.serving.compositions import CompositionError, Compositions
from lorahub_serve.serving.store import AdapterStore, BaseModelShapes


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("comps")
    model, _ = testing.tiny_llama(d / "m", hidden=128)
    return d, model


@pytest.fixture(scope="module")
def comps(base_model):
    d, model = base_model
    hub = testing.random_hub(model, d / "hub", n=4, ranks=(4, 2), scale=3.0)  # task0, task2: rank 4
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
    ({"modules": {"task0": 1}, "rule": "mean"}, "base",
     ("'lorahub' or 'linear' .*or one of PEFT's merges 'ties', 'dare_linear', 'dare_ties', "
      "'magnitude_prune'; got 'mean'")),
    ({"modules": {"task0": 1}, "rule": "ties", "desnity": 0.5}, "base",
     r"unknown field\(s\) \['desnity'\] .*allowed: modules, rule, density, majority_sign_method, seed"),
    *[({"modules": {"task0": 1}, "rule": "ties", "density": d}, "base",
       rf"in 'lorahub': density must be a number in \(0, 1\] .*got {shown}")
      for d, shown in ((0, "0"), (1.5, "1.5"), ("x", "'x'"), (float("nan"), "nan"), (False, "False"))],
    ({"modules": {"task0": 1}, "rule": "dare_linear", "majority_sign_method": "total"}, "base",
     "in 'lorahub': majority_sign_method does not apply to rule 'dare_linear'"),
    ({"modules": {"task0": 1}, "rule": "ties", "majority_sign_method": "most"}, "base",
     "majority_sign_method must be one of total, frequency; got 'most'"),
    ({"modules": {"task0": 1}, "density": 0.5}, "base", "density does not apply to rule 'lorahub'"),
    ({"modules": {"task0": 1}, "rule": "ties", "seed": 3}, "base", "seed does not apply to rule 'ties'"),
    ({"modules": {"task0": 1}, "rule": "dare_ties", "seed": "3"}, "base", "seed must be an integer"),
    ({"modules": {"task0": 1, "task1": 1}, "rule": "ties"}, "base",
     r"'lorahub.modules': rule 'ties' merges modules of one rank .*ranks \[4, 2\]"),
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
    merge, names, weights = comps.check(spec, "base")
    assert (merge.rule, names, weights) == ("linear", ["task0", "task1", "task3"], [1.0, 0.5, -0.5])


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


def test_merge_rules_are_checked_named_and_recorded(comps):
    spec = {"modules": {"task2": 0.5, "task0": -1}, "rule": "ties", "density": 0.3}
    merge, names, weights = comps.check(spec, "base")
    assert (merge.to_dict(), names, weights) == (
        {"rule": "ties", "density": 0.3, "majority_sign_method": "total", "seed": None},
        ["task0", "task2"], [-1.0, 0.5])
    explicit = comps.check({**spec, "majority_sign_method": "total"}, "base")[0]
    assert comps.name(explicit, names, weights) == comps.name(merge, names, weights)  # the default
    others = [comps.check({**spec, **kw}, "base")[0] for kw in (
        {"density": 0.4}, {"majority_sign_method": "frequency"}, {"rule": "dare_ties"},
        {"rule": "dare_ties", "seed": 1}, {"rule": "magnitude_prune"})]
    assert len({comps.name(m, names, weights) for m in [merge, *others]}) == 6


@pytest.mark.filterwarnings("ignore:The density 1.0:UserWarning")  # PEFT's own, in the oracle
@pytest.mark.parametrize("spec", [
    {"rule": "ties", "density": 0.3, "majority_sign_method": "frequency"},
    {"rule": "dare_linear", "density": 0.6, "seed": 11},
    {"rule": "dare_ties"},
    {"rule": "magnitude_prune", "density": 1.0},
], ids=lambda s: s["rule"])
def test_merge_rules_build_peft_add_weighted_adapter(comps, base_model, spec):
    """The served adapter is PEFT's own merge of the module folders (rank 4, alpha 4)."""
    import json

    weights = {"task0": 0.7, "task2": -1.2}  # both rank 4
    name, _ = asyncio.run(comps.ensure({"modules": weights, **spec}, "base"))
    folder = comps.store.folder(name)
    merge = comps.check({"modules": weights, **spec}, "base")[0]
    meta = json.loads((folder / "lorahub.json").read_text())
    assert {k: meta[k] for k in ("rule", "density", "majority_sign_method", "seed")} == merge.to_dict()
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 4
    net, want = testing.peft_weighted_adapter(
        base_model[1], {n: comps.modules[n].path for n in weights}, list(weights.values()), merge)
    net.unload()
    got = load_file(folder / "adapter_model.safetensors")
    assert sorted(k for k in got if "lora_A" in k) == sorted(f"base_model.model.{k}.lora_A.weight" for k in want)
    for layer, (a, b) in want.items():
        for which, w in (("A", a), ("B", b)):
            g = got[f"base_model.model.{layer}.lora_{which}.weight"]
            bad = ~torch.isclose(g, w, rtol=1e-6, atol=1e-6)
            assert not bad.any(), f"{layer} lora_{which}: {int(bad.sum())}/{bad.numel()} differ from PEFT's"
