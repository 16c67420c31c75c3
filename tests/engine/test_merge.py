"""PEFT's merges (`engine/merge.py`) against PEFT itself: `merge_factors` and `compose_factors`
give the factors of `PeftModel.add_weighted_adapter(..., combination_type=rule)` on the same
module folders and weights (a negative one included), layer by layer; DARE seeded alike."""

import math

import pytest
import torch

from lorahub_serve import testing
from lorahub_serve.engine.export import compose_factors, composed_rank
from lorahub_serve.engine.hub import module_from_folder, stack_modules
from lorahub_serve.engine.merge import MergeSpec, merge_factors
from lorahub_serve.models import load_base

RULES = ("ties", "dare_linear", "dare_ties", "magnitude_prune")
WEIGHTS = (0.8, -0.6, 1.3)
# Three rank-4 modules; other alphas (scalings 2, 3, 1.25); the third also adapts o_proj, which
# the others leave alone (PEFT merges only the modules that adapt a layer).
MODULES = (("m0", 8, ("q_proj", "v_proj")), ("m1", 12, ("q_proj", "v_proj")),
           ("m2", 5, ("q_proj", "v_proj", "o_proj")))
RTOL, ATOL = 1e-6, 1e-6  # fp32; the same functions on the same tensors agree bit for bit


@pytest.fixture(scope="module")
def base(tiny_llama_dir, tmp_path_factory):
    model, _ = load_base(tiny_llama_dir)
    d = tmp_path_factory.mktemp("merge_hub")
    folders = {name: testing.random_adapter(model, d / name, rank=4, alpha=alpha, target_modules=tm,
                                            seed=10 + i, scale=3.0)
               for i, (name, alpha, tm) in enumerate(MODULES)}
    return model, folders, [module_from_folder(f, n) for n, f in folders.items()]


def peft_factors(model, folders, weights, spec):
    net, factors = testing.peft_weighted_adapter(model, folders, weights, spec)
    net.unload()
    return factors


def assert_same_factors(got, want):
    """Every layer's A and B within fp32 tolerance; on failure, how many entries differ and where."""
    assert list(got) == list(want), f"layers (in order) {list(got)} != PEFT's {list(want)}"
    for layer in want:
        for which, g, w in zip("AB", got[layer], want[layer]):
            assert g.shape == w.shape, f"{layer} {which}: shape {tuple(g.shape)} != PEFT's {tuple(w.shape)}"
            bad = ~torch.isclose(g, w, rtol=RTOL, atol=ATOL)
            if bad.any():
                first = tuple(bad.nonzero()[0].tolist())
                pytest.fail(f"{layer} lora_{which}: {int(bad.sum())}/{bad.numel()} entries differ from "
                            f"PEFT's, first at {first} ({g[first].item()} vs {w[first].item()}), max abs "
                            f"diff {(g - w).abs().max().item():.3g}")


SPECS = [MergeSpec(rule, density=d) for rule in RULES for d in (None, 0.3, 1.0)] + [
    MergeSpec("ties", density=0.6, majority_sign_method="frequency"),
    MergeSpec("dare_ties", density=0.4, majority_sign_method="frequency", seed=7),
    MergeSpec("dare_linear", seed=123)]


@pytest.mark.filterwarnings("ignore:The density 1.0:UserWarning")  # PEFT's own, in the oracle
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "-".join(str(v) for v in s.to_dict().values()
                                                               if v is not None))
def test_merge_factors_are_peft_add_weighted_adapter(base, spec):
    model, folders, mods = base
    got = merge_factors(model, mods, WEIGHTS, spec)
    assert_same_factors(got, peft_factors(model, folders, WEIGHTS, spec))
    assert {a.shape[0] for a, _ in got.values()} == {4}  # the modules' common rank


def test_compose_factors_from_a_hub_stack_is_the_same_merge(base):
    """The engine's path: `compose_factors` on a stack (scaling folded in, bf16 here) reads the
    modules' own files for PEFT's merges, so the stack's dtype and padding do not enter."""
    model, folders, mods = base
    stack = stack_modules(model, [mods[2], mods[0], mods[1]], dtype=torch.bfloat16)
    spec = MergeSpec("dare_ties", density=0.5, seed=3)
    got = compose_factors(stack, [1, 2, 0], WEIGHTS, spec, model=model)
    assert_same_factors(got, peft_factors(model, folders, WEIGHTS, spec))
    with pytest.raises(ValueError, match="needs the base model"):
        compose_factors(stack, [1, 2, 0], WEIGHTS, spec)


def test_one_module_is_peft_weighted_sum(base):
    """PEFT merges a single adapter by its weighted sum (no pruning); so does the export."""
    model, folders, mods = base
    spec = MergeSpec("ties", density=0.2)
    got = merge_factors(model, mods[1:2], [-0.7], spec)
    assert_same_factors(got, peft_factors(model, {"m1": folders["m1"]}, [-0.7], spec))


def test_dare_is_reproducible_by_seed_and_leaves_torch_rng_alone(base):
    model, _, mods = base
    state = torch.random.get_rng_state()
    a = merge_factors(model, mods, WEIGHTS, MergeSpec("dare_linear", seed=5))
    assert torch.equal(torch.random.get_rng_state(), state)
    b = merge_factors(model, mods, WEIGHTS, MergeSpec("dare_linear", seed=5))
    c = merge_factors(model, mods, WEIGHTS, MergeSpec("dare_linear", seed=6))
    assert all(torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1]) for k in a)
    assert any(not torch.equal(a[k][0], c[k][0]) for k in a)


def test_mixed_ranks_are_refused_naming_them(base, tmp_path):
    model, _, mods = base
    other = module_from_folder(testing.random_adapter(model, tmp_path / "r2", rank=2, seed=3), "r2")
    with pytest.raises(ValueError, match=r"rule 'ties' merges modules of one rank .* ranks \[4, 2\]"):
        merge_factors(model, [mods[0], other], [1.0, 1.0], MergeSpec("ties"))
    assert composed_rank([8, 8, 8], "dare_ties") == composed_rank([8, 8], MergeSpec("ties")) == 8
    with pytest.raises(ValueError, match=r"ranks \[8, 4\]"):
        composed_rank([8, 4], "magnitude_prune")


def test_spec_defaults_apply_to_the_rules_that_take_them():
    assert MergeSpec("ties") == MergeSpec("ties", 0.5, "total")
    assert MergeSpec("dare_ties").to_dict() == {"rule": "dare_ties", "density": 0.5,
                                                "majority_sign_method": "total", "seed": 0}
    assert MergeSpec("dare_linear").params() == {"density": 0.5, "seed": 0}
    assert MergeSpec("magnitude_prune", density=1).params() == {"density": 1.0}
    assert MergeSpec("lorahub").params() == {} and MergeSpec().rule == "lorahub"


@pytest.mark.parametrize("kw, message", [
    ({"rule": "mean"}, (r"rule must be one of lorahub, linear, ties, dare_linear, dare_ties, "
                        r"magnitude_prune; got 'mean'")),
    ({"rule": "ties", "density": 0}, r"density must be a number in \(0, 1\] .*got 0"),
    ({"rule": "ties", "density": 1.5}, r"density must be .*got 1.5"),
    ({"rule": "dare_ties", "density": "x"}, r"density must be .*got 'x'"),
    ({"rule": "dare_linear", "density": math.nan}, r"density must be .*got nan"),
    ({"rule": "ties", "density": True}, r"density must be .*got True"),
    ({"rule": "ties", "majority_sign_method": "mean"}, (r"majority_sign_method must be one of total, "
                                                        r"frequency; got 'mean'")),
    ({"rule": "dare_linear", "majority_sign_method": "total"},
     r"majority_sign_method does not apply to rule 'dare_linear' .*applies to ties, dare_ties"),
    ({"rule": "magnitude_prune", "majority_sign_method": "total"}, "does not apply to rule 'magnitude_prune'"),
    ({"rule": "lorahub", "density": 0.5}, r"density does not apply to rule 'lorahub' \(got 0.5\)"),
    ({"rule": "ties", "seed": 1}, r"seed does not apply to rule 'ties' .*dare_linear, dare_ties"),
    ({"rule": "dare_ties", "seed": -1}, r"seed must be an integer in \[0, 2\*\*63\), got -1"),
    ({"rule": "dare_ties", "seed": 1.0}, r"seed must be an integer .*got 1.0"),
])
def test_bad_specs_name_the_parameter_the_value_and_what_is_allowed(kw, message):
    with pytest.raises(ValueError, match=message):
        MergeSpec(**kw)
