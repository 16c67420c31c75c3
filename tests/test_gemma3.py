"""Gemma 3 270M, the second real model family (slow: fetches and converts the model once, about
2 minutes and 1.1 GB in the cache; `pytest -m slow tests/test_gemma3.py`)."""

import json

import numpy as np
import pytest

from lorahub_serve.models import REGISTRY, greedy_answer, resolve_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma3():
    return resolve_model("gemma3-270m", fetch=True)  # runs the fetch's own check when it converts


def test_fetch_gives_gemma3_270m_that_knows_paris(gemma3):
    config = json.loads((gemma3 / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"] and config["model_type"] == "gemma3_text"
    shape = {k: config[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads",
                                    "num_key_value_heads", "head_dim", "vocab_size", "sliding_window")}
    assert shape == {"num_hidden_layers": 18, "hidden_size": 640, "num_attention_heads": 4,
                     "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 262144, "sliding_window": 512}
    assert config["layer_types"].count("full_attention") == 3 and config.get("final_logit_softcapping") is None
    spec = REGISTRY["gemma3-270m"]
    answer = greedy_answer(gemma3, spec.check_prompt, chat=spec.check_chat)
    assert "Paris" in answer, answer


def test_engine_losses_equal_peft_on_gemma3(gemma3, tmp_path):
    """Random rank-4 q,v modules on the real weights: the engine's losses for the base, one module
    alone and a linear composition equal PEFT's, with logits taken only where loss is (a 262k
    vocabulary), through block attention (the rows fit the 512-token window)."""
    from peft import PeftModel

    from lorahub_serve.data import from_records
    from lorahub_serve.engine.adapt import Engine
    from lorahub_serve.engine.hub import read_manifest
    from lorahub_serve.models import load_base
    from lorahub_serve.prompting import prompt_ids
    from lorahub_serve.testing import FEW_SHOT, random_hub, reference_loss

    base, tok = load_base(gemma3)
    assert prompt_ids(tok, "Q:")[0] == tok.bos_token_id  # Gemma needs its BOS
    hub = random_hub(base, tmp_path / "hub", n=2, ranks=(4,), base_name="gemma3-270m", scale=0.5)
    eng = Engine(gemma3, hub, rule="linear", dtype="float32")
    try:
        assert eng.evaluator.blocks and eng.evaluator.window == 512
        eng.evaluator.add_task("t", from_records(FEW_SHOT))
        mix = [0.8, -0.6]
        ours = eng.evaluator.losses(["t"] * 3, np.array([[0, 1]] * 3),
                                    np.array([[0.0, 0.0], [1.0, 0.0], mix], dtype=np.float32))
    finally:
        eng.close()
    modules = read_manifest(hub)
    peft = PeftModel.from_pretrained(base, modules[0].path, adapter_name="m0")
    peft.load_adapter(modules[1].path, adapter_name="m1")
    peft.add_weighted_adapter(["m0", "m1"], mix, adapter_name="mix", combination_type="cat")
    theirs = []
    for adapter in (None, "m0", "mix"):
        if adapter is None:
            with peft.disable_adapter():
                theirs.append(reference_loss(peft.eval(), tok, FEW_SHOT))
        else:
            peft.set_adapter(adapter)
            theirs.append(reference_loss(peft.eval(), tok, FEW_SHOT))
    diff = np.abs(np.array(theirs) - ours)
    print(f"engine {ours} PEFT {theirs} max |diff| {diff.max():.2e}")
    assert diff.max() < 1e-4, (ours, theirs)
    assert abs(theirs[2] - theirs[0]) > 1e-3  # the composition changes the loss
