"""Export on a hub of mixed ranks: the adapter has the composition's own rank (`composed_rank`),
not the stack's padded one, and its ΔW is still the dense sum Σ wₖsₖBₖAₖ of the module files."""

import json

import pytest
import torch
from safetensors.torch import load_file

from lorahub_serve import adapt, testing
from lorahub_serve.engine.hub import read_manifest
from lorahub_serve.models import load_base

RANKS = (4, 4, 4, 16, 16, 16)  # task0..task2 rank 4, task3..task5 rank 16


@pytest.fixture(scope="module")
def mixed_hub(tiny_llama_dir, tmp_path_factory):
    model, _ = load_base(tiny_llama_dir)
    return testing.random_hub(model, tmp_path_factory.mktemp("mixed_hub"), n=len(RANKS), ranks=RANKS,
                              scale=3.0)


def test_composed_rank_is_the_largest_or_the_sum():
    from lorahub_serve.engine.export import composed_rank

    assert composed_rank([4, 16, 4], "lorahub") == 16
    assert composed_rank([4, 16, 4], "linear") == 24
    with pytest.raises(ValueError, match="rule must be"):
        composed_rank([4], "mean")
    with pytest.raises(ValueError, match="no modules"):
        composed_rank([], "lorahub")


def dense_delta(folder) -> dict[str, torch.Tensor]:
    """PEFT key prefix -> ΔW = (alpha/r)·B·A of one adapter folder, read from its own files."""
    cfg = json.loads((folder / "adapter_config.json").read_text())
    t = load_file(folder / "adapter_model.safetensors")
    scale = cfg["lora_alpha"] / cfg["r"]
    return {k.removesuffix(".lora_A.weight"): scale * t[k.replace("lora_A", "lora_B")].double() @ t[k].double()
            for k in t if k.endswith(".lora_A.weight")}


@pytest.mark.parametrize("rule", ["lorahub", "linear"])
@pytest.mark.parametrize("names", [["task0", "task1", "task2"], ["task0", "task3", "task4"]])
def test_adapt_exports_the_composed_rank_and_the_dense_sum(tiny_llama_dir, mixed_hub, few_shot, tmp_path,
                                                           rule, names):
    out = tmp_path / "adapter"
    res = adapt(tiny_llama_dir, mixed_hub, few_shot, out=out, modules=names, budget=6, seed=1, rule=rule,
                progress=False)
    ranks = [m.rank for m in res.modules]
    want_rank = max(ranks) if rule == "lorahub" else sum(ranks)  # 4 | 16, and 12 | 36
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == want_rank, f"exported r={cfg['r']} for modules of ranks {ranks} ({rule})"
    tensors = load_file(out / "adapter_model.safetensors")
    assert {t.shape[0] for k, t in tensors.items() if "lora_A" in k} == {want_rank}

    # Oracle: Σ wₖ ΔWₖ over the modules' own PEFT folders, no hub stack involved.
    by_name = {m.name: m for m in read_manifest(mixed_hub)}
    want: dict[str, torch.Tensor] = {}
    for name, w in zip(names, res.weights):
        for key, d in dense_delta(by_name[name].path).items():
            want[key] = want.get(key, 0) + float(w) * d
    got = dense_delta(out)
    assert sorted(got) == sorted(want)
    for key, dense in want.items():
        torch.testing.assert_close(got[key], dense, rtol=1e-5, atol=1e-6, msg=key)
