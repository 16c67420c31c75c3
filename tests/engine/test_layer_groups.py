"""Per-layer-group weights (`adapt --weights per-layer-group:G`) on a tiny Llama (2 blocks):
G = 1 is today's search exactly; G = 2 runs in the same batched pass, equals a PEFT model of the
per-layer composition, and exports an ordinary PEFT LoRA whose layers compose with their group's
recorded weights."""

import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from peft.utils import load_peft_weights
from safetensors.torch import load_file

from lorahub_serve import adapt
from lorahub_serve.data import from_records
from lorahub_serve.engine.evaluator import Evaluator
from lorahub_serve.engine.hub import read_manifest, stack_modules
from lorahub_serve.engine.layer_groups import layer_depth, layer_groups, parse_weights_spec
from lorahub_serve.engine.search import SearchConfig, run_search
from lorahub_serve.formats import peft_key
from lorahub_serve.models import load_base
from lorahub_serve.testing import reference_loss

TOL = 1e-4


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _evaluator(folder, hub, rule="lorahub"):
    model, tok = load_base(folder)
    return Evaluator(model, tok, stack_modules(model, read_manifest(hub)), rule=rule, backend="torch",
                     token_budget=64)


def test_weights_spec_is_parsed_or_named_as_wrong():
    assert parse_weights_spec("global") == 1
    assert parse_weights_spec("per-layer-group:4") == 4
    for bad in ("per-layer-group:0", "per-layer-group:x", "layer:2", "per-layer-group:"):
        with pytest.raises(ValueError, match="--weights must be 'global' or 'per-layer-group:G'"):
            parse_weights_spec(bad)


def test_groups_are_contiguous_blocks():
    layers = [f"model.layers.{i}.self_attn.{p}" for i in range(6) for p in ("q_proj", "v_proj")]
    g = layer_groups(layers, 4)
    assert [g[f"model.layers.{i}.self_attn.q_proj"] for i in range(6)] == [0, 0, 1, 2, 2, 3]
    assert layer_depth("encoder.block.3.layer.0.SelfAttention.q") == 3
    with pytest.raises(ValueError, match="adapts 6 blocks, so at most 6 groups"):
        layer_groups(layers, 7)


def test_one_group_is_todays_search(tiny_llama_dir, tiny_llama_hub, few_shot):
    """adapt with G = 1 (grouped weights [P, 1, K] through the engine) gives the same losses and
    weights as the search over global weights [P, K], evaluation by evaluation."""
    ev = _evaluator(tiny_llama_dir, tiny_llama_hub)
    ev.add_task("t", from_records(few_shot))
    k = len(ev.stack.modules)
    idx = np.arange(k)

    def global_loss(w):
        return ev.losses(["t"] * len(w), np.tile(idx, (len(w), 1)), w)

    def one_group_loss(w):
        return ev.losses(["t"] * len(w), np.tile(idx, (len(w), 1)), w[:, None, :])

    cfg = SearchConfig(budget=14, seed=5, select="random")
    a, b = run_search(global_loss, k, cfg), run_search(one_group_loss, k, cfg)
    ev.close()
    assert a.history == b.history
    np.testing.assert_array_equal(a.best_weights, b.best_weights)
    res = adapt(tiny_llama_dir, tiny_llama_hub, few_shot, modules=[m.name for m in read_manifest(tiny_llama_hub)],
                budget=14, seed=5, select="random", groups=1, progress=False)
    assert res.history == a.history and res.weights.shape == (k,)
    np.testing.assert_array_equal(res.weights, a.best_weights)


@pytest.mark.parametrize("rule", ["lorahub", "linear"])
def test_grouped_batch_equals_peft_of_the_per_layer_composition(tiny_llama_dir, tiny_llama_hub, few_shot,
                                                                rule, tmp_path):
    """Candidates [C, 2, K] in one batched pass: each one's loss equals a PEFT model of the export
    (layer l composed with its group's weights); equal rows equal the global candidate; unequal
    rows differ from both groups' global compositions."""
    from lorahub_serve.engine.export import compose_factors, write_adapter

    examples = from_records(few_shot)
    ev = _evaluator(tiny_llama_dir, tiny_llama_hub, rule)
    ev.add_task("t", examples)
    k = len(ev.stack.modules)
    w = np.random.default_rng(0).uniform(-1.5, 1.5, size=(3, 2, k)).astype(np.float32)
    w[2, 1] = w[2, 0]
    idx = np.tile(np.arange(k), (3, 1))
    ours = ev.losses(["t"] * 3, idx, w)
    flat = ev.losses(["t"] * 3, idx, np.stack([w[0, 0], w[0, 1], w[2, 0]]))  # global compositions
    stack = ev.stack
    ev.close()
    assert abs(ours[2] - flat[2]) < 1e-6  # equal rows: the global composition
    assert min(abs(ours[0] - flat[0]), abs(ours[0] - flat[1])) > 1e-3  # not vacuous
    tok = load_base(tiny_llama_dir)[1]
    for c in range(3):
        out = tmp_path / f"c{c}"
        write_adapter(out, compose_factors(stack, list(range(k)), w[c], rule), str(tiny_llama_dir))
        base, _ = load_base(tiny_llama_dir)
        theirs = reference_loss(PeftModel.from_pretrained(base, out).eval(), tok, examples)
        assert abs(ours[c] - theirs) < TOL, f"candidate {c}: engine {ours[c]:.6f} vs PEFT {theirs:.6f}"


def test_two_groups_adapt_exports_the_recorded_per_layer_composition(tiny_llama_dir, tiny_llama_hub,
                                                                      few_shot, tmp_path):
    out = tmp_path / "store" / "grouped"
    res = adapt(tiny_llama_dir, tiny_llama_hub, few_shot, out=out, budget=16, seed=2, groups=2,
                progress=False)
    meta = json.loads((out / "lorahub.json").read_text())
    w = np.asarray(meta["weights"])
    k = len(meta["modules"])
    assert w.shape == (2, k) and meta["weights_spec"] == "per-layer-group:2"
    assert meta["search"]["groups"] == 2 and len(meta["objective_history"]) == 16
    assert [m["weight"] for m in meta["modules"]] == w.T.tolist()
    np.testing.assert_allclose(w, res.weights)
    assert not np.allclose(w[0], w[1]), "the search must give the groups different weights"
    assert all(n.startswith("model.layers.0.") for n in meta["layer_groups"][0])
    assert all(n.startswith("model.layers.1.") for n in meta["layer_groups"][1])
    # each exported layer = Σ_k w[group, k] A_k, Σ_k w[group, k] s_k B_k over the modules' own files
    hub = {m.name: m for m in read_manifest(tiny_llama_hub)}
    mods = [hub[m["name"]] for m in meta["modules"]]
    sds = [load_peft_weights(str(m.path)) for m in mods]
    exported = load_file(out / "adapter_model.safetensors")
    r = max(m.rank for m in mods)
    for g, layers in enumerate(meta["layer_groups"]):
        for layer in layers:
            for which in ("A", "B"):
                key = peft_key(layer, which)
                want = 0
                for wk, sd, m in zip(w[g], sds, mods):
                    t = sd[key].float()
                    t = (torch.nn.functional.pad(t, (0, 0, 0, r - t.shape[0])) if which == "A"
                         else torch.nn.functional.pad(t, (0, r - t.shape[1])) * m.scaling)
                    want = want + float(wk) * t
                torch.testing.assert_close(exported[key], want, atol=1e-5, rtol=1e-5)
    base, tok = load_base(tiny_llama_dir)
    peft = PeftModel.from_pretrained(base, out).eval()
    assert reference_loss(peft, tok, few_shot) == pytest.approx(res.best_loss, abs=TOL)


def test_bad_groups_are_refused_before_the_search(tiny_llama_dir, tiny_llama_hub, few_shot, tmp_path):
    with pytest.raises(ValueError, match="adapts 2 blocks, so at most 2 groups"):
        adapt(tiny_llama_dir, tiny_llama_hub, few_shot, budget=4, groups=3, progress=False)
    with pytest.raises(ValueError, match="groups must be an integer >= 1"):
        SearchConfig(groups=0)
    with pytest.raises(ValueError, match="merges global weights"):
        adapt(tiny_llama_dir, tiny_llama_hub, few_shot, out=tmp_path / "x", budget=4, groups=2,
              export_rule="ties", progress=False)


def test_adapt_batch_refuses_layer_groups(tiny_llama_dir, tiny_llama_hub, tmp_path):
    from lorahub_serve.cluster.driver import run_adapt_batch

    with pytest.raises(ValueError, match="per-layer-group:G is not supported by adapt-batch"):
        run_adapt_batch(str(tiny_llama_dir), str(tiny_llama_hub), [], tmp_path / "store", 0, None,
                        SearchConfig(groups=2), None)
