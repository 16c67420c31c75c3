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


def test_adapt_exports_a_peft_merge_of_the_weights_found(tiny_llama_dir, mixed_hub, few_shot, tmp_path):
    """The search composes with its rule (lorahub); `export_rule` makes OUT PEFT's merge of the
    weights found: PEFT's add_weighted_adapter on the module folders gives the same factors."""
    from lorahub_serve.engine.merge import MergeSpec

    out, names = tmp_path / "adapter", ["task0", "task1", "task2"]  # all rank 4
    spec = MergeSpec("dare_ties", density=0.4, seed=3)
    res = adapt(tiny_llama_dir, mixed_hub, few_shot, out=out, modules=names, budget=6, seed=1,
                progress=False, export_rule=spec)
    meta = json.loads((out / "lorahub.json").read_text())
    assert (meta["rule"], meta["search_rule"], meta["density"], meta["majority_sign_method"],
            meta["merge_seed"]) == ("dare_ties", "lorahub", 0.4, "total", 3)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
    by_name = {m.name: m for m in read_manifest(mixed_hub)}
    model, _ = load_base(tiny_llama_dir)
    net, want = testing.peft_weighted_adapter(model, {n: by_name[n].path for n in names}, res.weights, spec)
    net.unload()
    got = load_file(out / "adapter_model.safetensors")
    for layer, (a, b) in want.items():
        torch.testing.assert_close(got[f"base_model.model.{layer}.lora_A.weight"], a, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got[f"base_model.model.{layer}.lora_B.weight"], b, rtol=1e-6, atol=1e-6)


def test_adapt_refuses_a_merge_of_mixed_ranks_before_searching(tiny_llama_dir, mixed_hub, few_shot, tmp_path):
    with pytest.raises(ValueError, match=r"rule 'ties' merges modules of one rank .*ranks \[4, 16\]"):
        adapt(tiny_llama_dir, mixed_hub, few_shot, out=tmp_path / "a", modules=["task0", "task3"],
              budget=6, progress=False, export_rule="ties")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("argv, want", [
    ([], {"rule": "lorahub", "density": None, "majority_sign_method": None, "seed": None}),
    (["--rule", "linear"], {"rule": "linear", "density": None, "majority_sign_method": None, "seed": None}),
    (["--export-rule", "ties", "--density", "0.3", "--majority-sign-method", "frequency"],
     {"rule": "ties", "density": 0.3, "majority_sign_method": "frequency", "seed": None}),
    (["--export-rule", "dare_linear", "--merge-seed", "4"],
     {"rule": "dare_linear", "density": 0.5, "majority_sign_method": None, "seed": 4}),
])
def test_adapt_command_line_export_options(argv, want):
    from lorahub_serve.cli import build_parser
    from lorahub_serve.engine.cli import export_spec

    a = build_parser().parse_args(["adapt", "--hub", "h", "--examples", "e", "--out", "o", *argv])
    assert export_spec(a).to_dict() == want


@pytest.mark.parametrize("argv, message", [
    (["--export-rule", "ties", "--density", "0"], r"density must be a number in \(0, 1\]"),
    (["--density", "0.5"], "density does not apply to rule 'lorahub'"),
    (["--export-rule", "magnitude_prune", "--majority-sign-method", "total"],
     "majority_sign_method does not apply to rule 'magnitude_prune'"),
    (["--export-rule", "ties", "--merge-seed", "1"], "seed does not apply to rule 'ties'"),
])
def test_adapt_command_line_refuses_bad_export_options(argv, message):
    from lorahub_serve.cli import build_parser
    from lorahub_serve.engine.cli import export_spec

    a = build_parser().parse_args(["adapt", "--hub", "h", "--examples", "e", "--out", "o", *argv])
    with pytest.raises(ValueError, match=message):
        export_spec(a)
