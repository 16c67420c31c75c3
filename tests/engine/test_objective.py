"""Per-example losses and the option term of the objective (engine/objective.py)."""

import json
import math

import numpy as np
import pytest

from lorahub_serve.data.examples import Example
from lorahub_serve.engine.adapt import Engine
from lorahub_serve.engine.objective import OptionTerm, option_examples
from lorahub_serve.engine.search import SearchConfig

# Word answers from a fixed label set, as BBH's two-way tasks are posed (words in the tiny vocabulary).
LABELED = [Example(f"Q: is the {w} blue?\nA:", f" {a}", ("yes", "no"), "text")
           for w, a in (("cat", "no"), ("dog", "yes"), ("sky", "yes"), ("cat", "yes"), ("dog", "no"))]


def test_example_losses_agree_with_losses_and_with_one_example_tasks(tiny_llama_dir, tiny_llama_hub):
    eng = Engine(tiny_llama_dir, tiny_llama_hub)
    try:
        ev = eng.evaluator
        ev.add_task("all", LABELED)
        for i, ex in enumerate(LABELED):
            ev.add_task(f"one{i}", [ex])
        w = np.random.default_rng(0).normal(0, 0.5, (3, 4)).astype(np.float32)
        idx = np.tile(np.arange(4), (3, 1))
        per = ev.example_losses(["all"] * 3, idx, w)
        assert [len(p) for p in per] == [len(LABELED)] * 3
        n = ev.tasks["all"].example_targets
        np.testing.assert_allclose([p @ n / n.sum() for p in per], ev.losses(["all"] * 3, idx, w), rtol=1e-5)
        for i in range(len(LABELED)):  # packed with the others or alone: the same example loss
            alone = ev.losses([f"one{i}"] * 3, idx, w)
            np.testing.assert_allclose([p[i] for p in per], alone, rtol=1e-4, atol=1e-5)
        # tasks of different sizes in one call: each candidate gets its own task's examples
        mixed = ev.example_losses(["one0", "all"], idx[:2], w[:2])
        assert [len(m) for m in mixed] == [1, len(LABELED)]
    finally:
        eng.close()


def test_option_nll_is_the_gold_options_softmax_loss():
    term = OptionTerm("k", sizes=(2, 3), gold=(1, 0))
    losses = np.array([0.5, 2.0, 1.0, 1.0, 1.0])  # ex 0: gold is the worse option; ex 1: a tie
    want = (-math.log(math.exp(-2.0) / (math.exp(-0.5) + math.exp(-2.0))) + math.log(3)) / 2
    assert term.nll(losses) == pytest.approx(want)
    flat, sizes, gold = option_examples(LABELED + [Example("Q: free text\nA:", " cat")])
    assert sizes == [2] * 5 and gold == [1, 0, 0, 0, 1] and len(flat) == 10  # the free-text one: no options
    assert [e.output for e in flat[:2]] == [" yes", " no"]


def test_contrast_adds_the_option_term_to_the_searched_loss(tiny_llama_dir, tiny_llama_hub, tmp_path):
    eng = Engine(tiny_llama_dir, tiny_llama_hub)
    try:
        plain = eng.adapt(LABELED, task="plain", config=SearchConfig(budget=8, seed=1), progress=False)
        res = eng.adapt(LABELED, task="contrast", config=SearchConfig(budget=8, seed=1, contrast=1.0),
                        progress=False, out=tmp_path / "contrast")
        ev = eng.evaluator
        assert "contrast\0options" in ev.tasks  # registered with its task...
        ev.add_task("contrast", LABELED)  # ...and gone when the task is added again without contrast
        assert "contrast\0options" not in ev.tasks and "contrast" not in ev.option_terms
        idx = np.array([res.module_idx])
        w = res.weights[None].astype(np.float32)
        base = ev.losses(["contrast"], idx, w)[0]
        ev.add_task("opts", [e for e in option_examples(LABELED)[0]], eos=False)
        nll = OptionTerm("opts", (2,) * 5, (1, 0, 0, 0, 1)).nll(ev.example_losses(["opts"], idx, w)[0])
        assert res.best_loss == pytest.approx(base + nll, rel=1e-4)
        assert nll > 0 and plain.best_loss < res.best_loss  # the term is there, and it is positive
        meta = json.loads((tmp_path / "contrast" / "lorahub.json").read_text())
        assert meta["search"]["contrast"] == 1.0
    finally:
        eng.close()


def test_contrast_must_be_a_finite_weight():
    with pytest.raises(ValueError, match="contrast"):
        SearchConfig(contrast=float("nan"))
    with pytest.raises(ValueError, match="contrast"):
        SearchConfig(contrast=-1)
