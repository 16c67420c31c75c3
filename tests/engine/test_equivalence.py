"""The batched per-candidate losses equal a PEFT model holding the composed adapter.

The oracle is built independently of the engine: the adapters' state dicts are read with PEFT's
own loader and composed here (lorahub rule), or composed by PEFT itself
(`add_weighted_adapter(combination_type="cat")`, which is exactly ΔW = Σ w·s·B·A: linear rule).
"""

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from peft.utils import load_peft_weights

from lorahub_serve.data import from_records
from lorahub_serve.engine.evaluator import Evaluator
from lorahub_serve.engine.hub import read_manifest, stack_modules
from lorahub_serve.models import load_base
from lorahub_serve.testing import reference_loss

TOL = 1e-4


def _weights(c, k, seed=0):
    return np.random.default_rng(seed).uniform(-1.5, 1.5, size=(c, k)).astype(np.float32)


def _lorahub_state_dict(folders, weights, scalings):
    """A = Σ wA, B = Σ w·s·B with ranks zero-padded to the largest; scaling 1 in the result."""
    sds = [load_peft_weights(str(f)) for f in folders]
    r = max(t.shape[0] for sd in sds for k, t in sd.items() if "lora_A" in k)
    out = {}
    for key in sds[0]:
        acc = None
        for sd, w, s in zip(sds, weights, scalings):
            t = sd[key].float()
            if "lora_A" in key:
                t = torch.nn.functional.pad(t, (0, 0, 0, r - t.shape[0]))
            else:
                t = torch.nn.functional.pad(t, (0, r - t.shape[1])) * s
            acc = w * t if acc is None else acc + w * t
        out[key] = acc
    return out, r


@pytest.fixture(params=["llama", "gemma3", "t5"])
def setup(request):
    folder, hub = (request.getfixturevalue(f"tiny_{request.param}_{what}") for what in ("dir", "hub"))
    return request.param == "t5", folder, hub


@pytest.mark.parametrize("rule", ["lorahub", "linear"])
def test_batched_losses_match_peft(setup, rule, few_shot):
    _, folder, hub = setup
    examples = from_records(few_shot)
    modules = read_manifest(hub)
    model, tok = load_base(folder)
    stack = stack_modules(model, modules)
    ev = Evaluator(model, tok, stack, rule=rule, backend="torch", token_budget=64)  # several micro-batches
    ev.add_task("t", examples)
    k = len(modules)
    module_idx = np.tile(np.arange(k), (6, 1))
    weights = _weights(6, k)
    weights[0] = 0.0  # the zero composition is the base model
    ours = ev.losses(["t"] * 6, module_idx, weights)
    ev.close()

    base_loss = reference_loss(load_base(folder)[0], tok, examples)
    assert abs(ours[0] - base_loss) < TOL
    for c in range(1, 6):
        base, _ = load_base(folder)
        if rule == "lorahub":
            sd, r = _lorahub_state_dict([m.path for m in modules], weights[c], [m.scaling for m in modules])
            cfg = LoraConfig(r=r, lora_alpha=r, target_modules=list(modules[0].target_modules), lora_dropout=0.0)
            peft = get_peft_model(base, cfg)
            res = set_peft_model_state_dict(peft, sd)
            assert not [k_ for k_ in res.unexpected_keys if "lora" in k_]
        else:
            peft = PeftModel.from_pretrained(base, modules[0].path, adapter_name="m0")
            for i, m in enumerate(modules[1:], 1):
                peft.load_adapter(m.path, adapter_name=f"m{i}")
            peft.add_weighted_adapter([f"m{i}" for i in range(k)], [float(w) for w in weights[c]],
                                      adapter_name="mix", combination_type="cat")
            peft.set_adapter("mix")
        theirs = reference_loss(peft.eval(), tok, examples)
        assert abs(ours[c] - theirs) < TOL, f"candidate {c}: engine {ours[c]:.6f} vs PEFT {theirs:.6f}"
        assert abs(theirs - base_loss) > 1e-3, "the composition must change the loss (test would be vacuous)"


def test_final_logit_softcap_is_applied(tmp_path, few_shot):
    """A model that soft-caps its logits (Gemma 2: tanh(z / 30) · 30; here a cap of 2, so that it
    bites) has the engine's losses equal its own, the cap included."""
    from lorahub_serve import testing

    examples = from_records(few_shot)
    model, _ = testing.tiny_gemma3(tmp_path / "m", final_logit_softcapping=2.0)
    hub = testing.random_hub(model, tmp_path / "hub", n=2, ranks=(4,), scale=3.0)
    modules = read_manifest(hub)
    net, tok = load_base(tmp_path / "m")
    ev = Evaluator(net, tok, stack_modules(net, modules), backend="torch")
    ev.add_task("t", examples)
    ours = ev.losses(["t"] * 2, np.array([[0, 1], [0, 1]]), np.array([[0.0, 0.0], [1.0, 0.0]]))
    ev.close()
    base, _ = load_base(tmp_path / "m")
    assert abs(ours[0] - reference_loss(base, tok, examples)) < TOL
    peft = PeftModel.from_pretrained(base, modules[0].path).eval()
    assert abs(ours[1] - reference_loss(peft, tok, examples)) < TOL
    base.config.final_logit_softcapping = None  # not vacuous: the cap changes the loss
    assert abs(reference_loss(peft, tok, examples) - ours[1]) > 1e-2
