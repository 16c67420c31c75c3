"""Compose, then refine (`adapt --refine N`) on a tiny Llama: the gradient steps lower the few-shot
loss from the composition, the leave-one-out guard keeps the step count its curve prefers, and the
exported adapter is what lorahub.json describes (form weights: the recorded weights' composition
of the hub modules; form factors: the refined factors, recorded as no longer a weighted sum)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from lorahub_serve import testing
from lorahub_serve.engine.adapt import Engine
from lorahub_serve.engine.export import compose_factors
from lorahub_serve.engine.refine import RefineConfig
from lorahub_serve.engine.search import SearchConfig
from lorahub_serve.formats import peft_key
from lorahub_serve.models import load_base
from lorahub_serve.testing import reference_loss

# One answer for every question: what four shots teach carries to the fifth, so the held-out
# loss falls with the first steps (the leave-one-out guard keeps some)
SHOTS = [{"input": e["input"], "output": " no"} for e in testing.FEW_SHOT]


@pytest.fixture(scope="module")
def engine(tiny_llama_dir, tiny_llama_hub):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    eng = Engine(tiny_llama_dir, tiny_llama_hub, dtype="float32")
    yield eng
    eng.close()
    torch.set_num_threads(n)


def _adapt(engine, out, refine, groups=1, **kw):
    return engine.adapt(SHOTS, task=out.name, out=out, progress=False, refine=refine,
                        config=SearchConfig(budget=10, seed=0, groups=groups), **kw)


def _peft_loss(folder, out):
    base, tok = load_base(folder)
    return reference_loss(PeftModel.from_pretrained(base, out).eval(), tok, SHOTS)


@pytest.mark.parametrize("groups", [1, 2])
def test_weights_form_lowers_the_loss_and_stays_an_exact_composition(engine, tiny_llama_dir, tmp_path, groups):
    out = tmp_path / f"w{groups}"
    res = _adapt(engine, out, RefineConfig(steps=8, on="weights"), groups=groups)
    meta = json.loads((out / "lorahub.json").read_text())
    r = meta["refine"]
    assert r["on"] == "weights" and r["steps_asked"] == 8 and r["lr"] == 1e-2 and r["guard"] == "loo"
    assert r["loss_before"] == pytest.approx(meta["best_loss"], abs=1e-5)  # starts at the composition
    assert 0 < r["steps_kept"] <= 8 and r["steps_kept"] == int(np.argmin(r["loo_curve"]))
    assert r["loss_after"] < r["loss_before"] - 1e-3
    assert meta["exact_composition"] is True and r["exact_composition"] is True
    w, w0 = np.asarray(meta["weights"]), np.asarray(meta["search_weights"])
    assert w.shape == w0.shape == ((len(res.modules),) if groups == 1 else (groups, len(res.modules)))
    assert not np.allclose(w, w0)
    # re-composing the hub modules with the recorded weights gives the exported tensors
    pos = {m.name: i for i, m in enumerate(engine.hub_modules)}
    again = compose_factors(engine.stack, [pos[m["name"]] for m in meta["modules"]], w, meta["rule"])
    exported = load_file(out / "adapter_model.safetensors")
    for layer, (a, b) in again.items():
        torch.testing.assert_close(exported[peft_key(layer, "A")], a, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(exported[peft_key(layer, "B")], b, atol=1e-6, rtol=1e-6)
    assert _peft_loss(tiny_llama_dir, out) == pytest.approx(r["loss_after"], abs=1e-4)


def test_factors_form_exports_the_refined_factors_and_says_so(engine, tiny_llama_dir, tmp_path):
    out = tmp_path / "f"
    res = _adapt(engine, out, RefineConfig(steps=6, on="factors", lr=1e-2))
    meta = json.loads((out / "lorahub.json").read_text())
    r = meta["refine"]
    assert r["on"] == "factors" and r["rule"] == "lorahub" and r["lr"] == 1e-2
    assert meta["exact_composition"] is False and r["exact_composition"] is False
    assert 0 < r["steps_kept"] <= 6 and r["loss_after"] < r["loss_before"] - 1e-3
    exported = load_file(out / "adapter_model.safetensors")
    for layer, (a, b) in res.factors.items():
        torch.testing.assert_close(exported[peft_key(layer, "A")], a)
        torch.testing.assert_close(exported[peft_key(layer, "B")], b)
    # the recorded weights are the composition it started from, no longer the adapter
    pos = {m.name: i for i, m in enumerate(engine.hub_modules)}
    start = compose_factors(engine.stack, [pos[m["name"]] for m in meta["modules"]], meta["weights"], "lorahub")
    assert max(float((exported[peft_key(n, "B")] - b).abs().max()) for n, (_, b) in start.items()) > 1e-4
    assert _peft_loss(tiny_llama_dir, out) == pytest.approx(r["loss_after"], abs=1e-4)


def test_the_guard_stops_where_the_held_out_loss_turns(engine, tmp_path):
    """A large step size overshoots: the held-out curve falls, then rises; the guard keeps the
    steps up to its minimum, where `--refine-guard none` keeps all and fits the shots further."""
    loo = _adapt(engine, tmp_path / "loo", RefineConfig(steps=10, on="weights", lr=0.05)).extra["refine"]
    assert loo["steps_kept"] == int(np.argmin(loo["loo_curve"])) < 10
    assert loo["loo_curve"][-1] > min(loo["loo_curve"])
    none = _adapt(engine, tmp_path / "none", RefineConfig(steps=10, on="weights", lr=0.05, guard="none"))
    r = none.extra["refine"]
    assert r["steps_kept"] == 10 and r["loo_curve"] is None
    assert r["loss_after"] < loo["loss_after"]


def test_no_refinement_by_default(engine, tmp_path):
    res = _adapt(engine, tmp_path / "plain", None)
    meta = json.loads((tmp_path / "plain" / "lorahub.json").read_text())
    assert "refine" not in meta and res.factors is None and meta["weights_spec"] == "global"


def test_bad_refine_settings_are_named():
    with pytest.raises(ValueError, match="--refine must be an integer >= 0"):
        RefineConfig(steps=-1)
    with pytest.raises(ValueError, match="--refine-on must be one of weights, factors"):
        RefineConfig(steps=2, on="bias")
    with pytest.raises(ValueError, match="--refine-lr must be a positive"):
        RefineConfig(steps=2, lr=0.0)


def test_one_example_cannot_be_held_out(engine, tmp_path):
    with pytest.raises(ValueError, match="at least 2 examples"):
        engine.adapt(SHOTS[:1], task="one", progress=False, config=SearchConfig(budget=4),
                     refine=RefineConfig(steps=2))


def test_cli_refuses_a_negative_refine(tiny_llama_dir, tiny_llama_hub, tmp_path):
    ex = tmp_path / "ex.jsonl"
    ex.write_text("\n".join(json.dumps(e) for e in SHOTS) + "\n")
    cmd = [sys.executable, "-m", "lorahub_serve.cli", "adapt", "--model", str(tiny_llama_dir), "--hub",
           str(tiny_llama_hub), "--examples", str(ex), "--out", str(tmp_path / "o")]
    for extra, message in ((["--refine", "-2"], "--refine must be an integer >= 0"),
                           (["--weights", "per-layer-group:0"], "--weights must be 'global' or")):
        p = subprocess.run(cmd + extra, capture_output=True, text=True, timeout=300, check=False)
        assert p.returncode == 2 and message in p.stderr, p.stderr[-2000:]
