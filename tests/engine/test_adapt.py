"""adapt end to end on a tiny Llama: export, reload with PEFT, determinism, bad input."""

import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from lorahub_serve import adapt
from lorahub_serve.data import ExampleError, from_records
from lorahub_serve.engine.hub import HubError
from lorahub_serve.models import load_base
from lorahub_serve.testing import reference_loss


@pytest.mark.parametrize("rule", ["lorahub", "linear"])
def test_exported_adapter_reproduces_best_loss(tiny_llama_dir, tiny_llama_hub, few_shot, tmp_path, rule):
    out = tmp_path / "store" / "my-task"
    res = adapt(tiny_llama_dir, tiny_llama_hub, few_shot, out=out, budget=12, seed=3, rule=rule,
                progress=False)
    meta = json.loads((out / "lorahub.json").read_text())
    assert meta["rule"] == rule and meta["budget"] == 12 and len(meta["objective_history"]) == 12
    assert meta["best_loss"] == pytest.approx(res.best_loss)
    assert min(meta["objective_history"]) == pytest.approx(res.best_objective)
    base, tok = load_base(tiny_llama_dir)
    peft = PeftModel.from_pretrained(base, out).eval()
    assert reference_loss(peft, tok, few_shot) == pytest.approx(res.best_loss, abs=1e-4)


def test_same_seed_same_weights(tiny_llama_dir, tiny_llama_hub, few_shot):
    a = adapt(tiny_llama_dir, tiny_llama_hub, few_shot, budget=10, seed=7, progress=False)
    b = adapt(tiny_llama_dir, tiny_llama_hub, few_shot, budget=10, seed=7, progress=False)
    c = adapt(tiny_llama_dir, tiny_llama_hub, few_shot, budget=10, seed=8, progress=False)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert a.history == b.history
    assert not np.array_equal(a.weights, c.weights)


def test_ngopt_mode_records_its_optimizer(tiny_llama_dir, tiny_llama_hub, few_shot):
    res = adapt(tiny_llama_dir, tiny_llama_hub, few_shot, budget=5, optimizer="ngopt", progress=False)
    assert res.optimizer.startswith("NGOpt") and res.evaluations == 5


def test_bad_inputs_get_clear_errors(tiny_llama_dir, tiny_llama_hub, tiny_t5_hub, few_shot, tmp_path):
    out = tmp_path / "keep"
    out.mkdir()
    (out / "precious.txt").write_text("data")
    kw = {"out": out, "progress": False}
    with pytest.raises(ValueError, match="budget"):
        adapt(tiny_llama_dir, tiny_llama_hub, few_shot, budget=0, **kw)
    with pytest.raises(HubError, match="larger than the hub"):
        adapt(tiny_llama_dir, tiny_llama_hub, few_shot, modules=9, **kw)
    with pytest.raises(HubError, match="not in the hub"):
        adapt(tiny_llama_dir, tiny_llama_hub, few_shot, modules=["nope"], **kw)
    with pytest.raises(ExampleError, match="no examples"):
        adapt(tiny_llama_dir, tiny_llama_hub, [], **kw)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ExampleError, match="empty"):
        adapt(tiny_llama_dir, tiny_llama_hub, empty, **kw)
    with pytest.raises(ExampleError, match="exceeds the model's context"):
        adapt(tiny_llama_dir, tiny_llama_hub, [{"input": "a " * 600, "output": " b"}], **kw)
    with pytest.raises(HubError, match="another base model"):  # a T5 hub on a Llama model
        adapt(tiny_llama_dir, tiny_t5_hub, few_shot, **kw)
    empty_hub = tmp_path / "nohub"
    empty_hub.mkdir()
    with pytest.raises(HubError, match="no modules"):
        adapt(tiny_llama_dir, empty_hub, few_shot, **kw)
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]  # nothing damaged


def test_non_finite_and_pickle_adapters_refused(tiny_llama_dir, tiny_llama_hub, few_shot, tmp_path):
    import shutil

    hub = tmp_path / "hub"
    shutil.copytree(tiny_llama_hub, hub)
    f = hub / "modules" / "task1" / "adapter_model.safetensors"
    t = load_file(f)
    key = next(iter(t))
    t[key][0, 0] = float("nan")
    save_file(t, f)
    with pytest.raises(HubError, match="NaN"):
        adapt(tiny_llama_dir, hub, few_shot, progress=False)
    torch.save(t, f.with_name("adapter_model.bin"))
    f.unlink()
    with pytest.raises(HubError, match="pickle"):
        adapt(tiny_llama_dir, hub, few_shot, progress=False)


def test_nan_weights_refused(tiny_llama_dir, tiny_llama_hub, few_shot):
    from lorahub_serve.engine.adapt import Engine

    eng = Engine(tiny_llama_dir, tiny_llama_hub)
    eng.evaluator.add_task("t", from_records(few_shot))
    with pytest.raises(ValueError, match="NaN"):
        eng.evaluator.losses(["t"], np.array([[0, 1]]), np.array([[np.nan, 0.1]]))
    eng.close()


@pytest.mark.parametrize("text, match", [("not json", "not readable JSON"), ('{"mods": []}', "no \"modules\" list"),
                                         ('{"modules": [{"name": "a"}]}', r"modules\[0\] lacks \['path'\]")])
def test_malformed_hub_json_is_named(tmp_path, text, match):
    from lorahub_serve.engine.hub import read_manifest

    (tmp_path / "hub.json").write_text(text)
    with pytest.raises(HubError, match=match):
        read_manifest(tmp_path)
