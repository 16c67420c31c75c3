"""PEFT's Arrow as a rival evaluation method (`eval --suite headroom --methods arrow`) on a tiny
Llama: it runs through PEFT's own `create_arrow_model` (its Arrow layers route the forward
passes), scores in [0, 100], leaves the shared base model as it was, and refuses modules of
mixed ranks by name."""

import json

import pytest
import torch

from lorahub_serve import testing
from lorahub_serve.data import from_records
from lorahub_serve.engine.hub import read_manifest
from lorahub_serve.eval.headroom import HeadroomConfig, arrow_score, run_headroom_eval
from lorahub_serve.models import load_base

WORDS = ("cat", "dog", "red", "blue", "green", "yes", "no")


@pytest.fixture(scope="module")
def one_rank_hub(tiny_llama_dir, tmp_path_factory):
    """3 random rank-4 modules (Arrow needs one rank)."""
    model, _ = load_base(tiny_llama_dir)
    return testing.random_hub(model, tmp_path_factory.mktemp("arrow_hub"), n=3, ranks=(4,), scale=3.0)


def _examples(n=14):
    return [{"input": f"Q: {WORDS[i % 7]} {WORDS[(i * 3) % 7]}?\nA:", "output": f" {WORDS[(i * 5) % 7]}"}
            for i in range(n)]


def _logits(model, tok, text="Q: cat dog?\nA:"):
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.inference_mode():
        return model(input_ids=ids).logits


def test_arrow_scores_through_pefts_arrow_layers(tiny_llama_dir, one_rank_hub, tmp_path):
    from peft.tuners.lora.arrow import ArrowLoraLinearLayer

    torch.set_num_threads(1)
    net, tok = load_base(tiny_llama_dir)
    before = _logits(net, tok)
    seen = {}

    def on_model(model):
        layers = [m for m in model.modules() if isinstance(m, ArrowLoraLinearLayer)]
        seen["layers"] = len(layers)
        seen["calls"] = 0

        def count(*_):
            seen["calls"] += 1
        for m in layers:
            m.register_forward_hook(count)
        seen["changed"] = float((_logits(model, tok) - before).abs().max())

    paths = [m.path for m in read_manifest(one_rank_hub)]
    cfg = HeadroomConfig(suite=tmp_path / "unused.json")
    score = arrow_score(net, tok, paths, from_records(_examples(6)), cfg, seed=1, on_model=on_model)
    assert 0.0 <= score <= 100.0
    assert seen["layers"] == 4  # q_proj and v_proj of both blocks
    assert seen["calls"] > 0, "the scoring passes must run through Arrow's router"
    assert seen["changed"] > 1e-3, "Arrow's modules must change the model's output"
    # unloaded afterwards: the shared base model is the base model again
    assert not any("lora" in n for n, _ in net.named_modules())
    torch.testing.assert_close(_logits(net, tok), before)


def test_arrow_refuses_mixed_ranks(tiny_llama_dir, tiny_llama_hub, tmp_path):
    net, tok = load_base(tiny_llama_dir)
    paths = [m.path for m in read_manifest(tiny_llama_hub)]  # ranks 2 and 4
    with pytest.raises(ValueError, match=r"needs modules of one rank; these have ranks \[2, 4\]"):
        arrow_score(net, tok, paths, from_records(_examples(3)), HeadroomConfig(suite=tmp_path / "s.json"), 0)


def test_headroom_eval_with_methods_arrow(tiny_llama_dir, one_rank_hub, tmp_path, monkeypatch):
    """A one-task suite on a JSONL task: the row holds arrow (over lorahub's K modules) and
    arrow_hub (the whole hub) beside the methods that always run."""
    torch.set_num_threads(1)
    task = str(tmp_path / "words.jsonl")
    (tmp_path / "words.jsonl").write_text("".join(json.dumps(e) + "\n" for e in _examples()))
    suite = testing.one_task_suite(load_base(tiny_llama_dir)[0], tmp_path, task)
    cfg = HeadroomConfig(suite=suite, seeds=(1, 2), limit=6, budget=4, modules=2, methods=("arrow", "arrow_hub"))
    from lorahub_serve.eval import headroom

    calls = []  # the real arrow_score, counted: (number of modules routed over) per call

    def counted(net, tok, adapters, *args, **kw):
        calls.append(len(adapters))
        return arrow_score(net, tok, adapters, *args, **kw)
    monkeypatch.setattr(headroom, "arrow_score", counted)
    row, row2 = run_headroom_eval(str(tiny_llama_dir), str(one_rank_hub), cfg, progress=False)
    for m in ("zero_shot", "lorahub", "arrow", "arrow_hub", "oracle"):
        assert 0.0 <= row[m] <= 100.0, m
    assert row["arrow_top_k"] == 3 and row["n_eval"] == 6
    assert not {"icl", "lora_ft", "lorahub_ngopt"} & set(row)
    # arrow_hub takes no shots and the whole hub: scored once per task, the same for every seed
    assert row2["arrow_hub"] == row["arrow_hub"]
    assert calls == [2, 3, 2]  # arrow (K = 2) per seed; arrow_hub (3 modules) for seed 1 only
