"""`lorahub-serve eval`: scoring, rank classification, the report, and the two answer back ends agreeing.

The back-end test runs one real BBH task (bbh/sports_understanding, official file) end to end on a tiny random
Llama with a random hub: search, best single module, soup, then greedy answers from the engine and
from vLLM behind our server. Both must give the same answers for every method, since vLLM serves
the exported compositions that the engine applies on the fly.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from peft import PeftModel

from lorahub_serve import testing
from lorahub_serve.data.examples import Example
from lorahub_serve.engine.adapt import Engine
from lorahub_serve.engine.hub import read_manifest
from lorahub_serve.eval.rank_classification import Method, option_losses, picks, rank_classification
from lorahub_serve.eval.report import markdown_table, summarise, write_report
from lorahub_serve.eval.run import (
    METHODS,
    EvalConfig,
    rc_key,
    run_eval,
    single_module_losses,
    soup_weights,
)
from lorahub_serve.models import load_base
from lorahub_serve.prompting import prompt_ids
from lorahub_serve.scoring import accuracy, extract_option, score

TASK = "bbh/sports_understanding"  # from the official BBH files (tests/conftest.py)
LETTER = Example("Q: ?\nOptions:\n(A) implausible\n(B) plausible\nA:", " (B)", ("implausible", "plausible"),
                 "letter")


@pytest.mark.parametrize("answer", ["(B) plausible", "B", "B)", "B.", " plausible", "Plausible.", "(b)",
                                    "\n\nB\nmore"])
def test_letter_example_counts_its_letter_or_its_text(answer):
    assert score(answer, LETTER)


@pytest.mark.parametrize("answer", ["(A)", "A", "implausible", "Because", "b", "(C)", "", "plausibly"])
def test_letter_example_refuses_other_options_and_non_answers(answer):
    assert not score(answer, LETTER)


def test_text_answers_match_whole_words_longest_first():
    valid = Example("q", " valid", ("valid", "invalid"), "text")
    assert not score("invalid", valid) and not score("validity", valid) and not score("B", valid)
    assert score("Valid, because the premises hold", valid)
    ironic = Example("q", " ironic", ("ironic", "not ironic"), "text")
    assert extract_option("not ironic at all", ironic) == 1 and not score("not ironic", ironic)
    assert score("Ironic!", ironic)
    yes = Example("q", " Yes", ("Yes", "No"), "text")
    assert score("Yes, because", yes) and not score("No", yes)


def test_generative_examples_use_the_reference_normalisation():
    ex = Example("Q: 2 and 3?\nA:", " 5")
    assert score(" 5.", ex) and score("5\nQ: next", ex) and not score("50", ex)
    assert accuracy([" 5", "6", "(B)"], [ex, ex, LETTER]) == pytest.approx(200 / 3)
    assert accuracy([], []) == 0.0
    with pytest.raises(ValueError, match="one answer per example"):
        accuracy(["5"], [ex, ex])


def test_soup_takes_the_k_lowest_losses_at_one_over_k():
    np.testing.assert_allclose(soup_weights(np.array([0.5, 0.1, 0.3, 0.2]), 3), [0, 1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(soup_weights(np.array([0.5, 0.1]), 3), [0.5, 0.5])  # k capped at K


def test_single_module_losses_reuse_the_search_start():
    never = SimpleNamespace(evaluator=None)  # an evaluation would fail: the start batch is used
    got = single_module_losses(never, SimpleNamespace(start_losses=np.array([9.0, 1.0, 2.0])), "t", [4, 7])
    np.testing.assert_array_equal(got, [1.0, 2.0])


def _direct_loss(model, tok, prompt: str, answer: str) -> float:
    """HF's mean CE of the answer tokens after the prompt (no EOS): one unbatched forward."""
    p, a = prompt_ids(tok, prompt), tok(answer, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        return model(input_ids=torch.tensor([p + a]), labels=torch.tensor([[-100] * len(p) + a])).loss.item()


def test_rank_classification_picks_the_lowest_independent_loss(tiny_llama_dir, tiny_llama_hub):
    examples = [Example("Q: is the cat blue?\nOptions: yes, no\nA:", " no", ("yes", "no"), "text"),
                Example("Q: which is left of up?\nOptions:\n(A) red\n(B) green\n(C) blue\nA:", " (B)",
                        ("red", "green", "blue"), "letter"),
                Example("Q: 2 and 3?\nA:", " 5")]  # generative: no pick
    icl = [f"{examples[0].input} no\n\n{e.input}" for e in examples]
    methods = {"base": Method([e.input for e in examples], None), "icl": Method(icl, None),
               "m1": Method([e.input for e in examples], np.eye(4)[1])}
    engine = Engine(tiny_llama_dir, tiny_llama_hub)
    try:
        got = option_losses(engine.evaluator, [0, 1, 2, 3], methods, examples, tag="rc-test")
        acc = rank_classification(engine.evaluator, [0, 1, 2, 3], methods, examples)
        left = dict(engine.evaluator.tasks)
    finally:
        engine.close()
    assert not left  # temporary tasks removed
    base, tok = load_base(tiny_llama_dir)
    module = PeftModel.from_pretrained(load_base(tiny_llama_dir)[0], read_manifest(tiny_llama_hub)[1].path).eval()
    for name, model in (("base", base), ("icl", base), ("m1", module)):
        assert got[name][2] is None and picks(got[name])[2] is None
        for j, ex in enumerate(examples[:2]):
            ref = [_direct_loss(model, tok, methods[name].prompts[j], c) for c in ex.choices]
            np.testing.assert_allclose(got[name][j], ref, atol=1e-4, err_msg=f"{name}, example {j}")
            assert picks(got[name])[j] == int(np.argmin(ref))
        want = 100 * np.mean([picks(got[name])[j] == examples[j].gold_index for j in range(2)])
        assert acc[name] == pytest.approx(want)
    assert len({tuple(got[n][1]) for n in methods}) == 3  # the compositions and prompts differ


def test_eval_config_refuses_tasks_outside_bbh():
    with pytest.raises(ValueError, match="not BBH tasks"):
        EvalConfig(tasks=("bbh/navigate", "rg/gcd@le20"))


def test_unknown_generator_is_refused(tiny_llama_dir, tiny_llama_hub):
    with pytest.raises(ValueError, match="generator must be"):
        run_eval(str(tiny_llama_dir), str(tiny_llama_hub), EvalConfig(tasks=(TASK,), seeds=(1,), limit=2,
                                                                      budget=2), generator="gpu", progress=False)


MIXED_RANKS = (4, 4, 16, 16, 4, 16)  # the world's hub: task0..task5


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    model, _ = testing.tiny_llama_for_vllm(root / "model")
    # Mixed ranks: seed 1 draws task0, task1, task4 (rank 4 only), seed 2 a rank-16 module too.
    hub = testing.random_hub(model, root / "hub", n=6, ranks=MIXED_RANKS, scale=3.0)
    return root, root / "model", hub


# Random selection: seed 1 draws rank-4 modules only and seed 2 a rank-16 one, so one server must serve both.
CFG = EvalConfig(tasks=(TASK,), seeds=(1, 2), limit=6, budget=6, modules=3, select="random")


@pytest.fixture(scope="module")
def engine_rows(world):
    _, model, hub = world
    return run_eval(str(model), str(hub), CFG, progress=False, generator="engine")


def test_engine_rows_and_report(world, engine_rows):
    root, _, _ = world
    assert [(r["task"], r["seed"]) for r in engine_rows] == [(TASK, 1), (TASK, 2)]
    for r in engine_rows:
        assert r["generator"] == "engine" and r["n_eval"] == 6
        for m in METHODS:
            assert 0.0 <= r[m] <= 100.0 and 0.0 <= r[rc_key(m)] <= 100.0 and len(r["examples"]) == 5
        assert np.isfinite(r["lorahub_loss"]) and r["optimizer"] and r["input_tokens_icl"] > r["input_tokens"]
        assert np.isfinite(r["lorahub_objective"]) and np.isfinite(r["ngopt_objective"])
        assert len(r["soup_modules"]) == 3 and r["best_single_module"] in r["soup_modules"]
    for m in ("zero_shot", "zero_shot_rc"):  # fixed evaluation set
        assert engine_rows[0][m] == engine_rows[1][m]
    # The compositions differ (scale-3 random modules), so comparing back ends below means something.
    answers = engine_rows[0]["examples"][0]
    assert len({answers[m] for m in ("zero_shot", "lorahub", "lorahub_ngopt", "best_single")}) >= 3
    paths = write_report(engine_rows, root / "out", "bbh_test", "lorahub-serve eval --test")
    md = paths["md"].read_text()
    assert "`lorahub-serve eval --test`" in md and f"| {TASK} | 50.0 |" in md and "**average**" in md
    assert "LoraHub RC" in md and "soup EM" in md and "NGOpt's on" in md and "of 2 task-seeds" in md
    assert markdown_table(summarise(engine_rows)) in md
    saved = json.loads(paths["json"].read_text())
    assert saved["summary"] == summarise(engine_rows) and saved["meta"]["commit"]
    assert paths["png"].stat().st_size > 1000


@pytest.mark.vllm
def test_vllm_answers_equal_the_engine(world, engine_rows):
    pytest.importorskip("vllm", reason="vLLM is not installed here")
    _, model, hub = world
    rows = run_eval(str(model), str(hub), CFG, progress=False, generator="vllm")
    assert [r["generator"] for r in rows] == ["vllm", "vllm"]
    rank = {m.name: m.rank for m in read_manifest(hub)}
    assert [max(rank[n] for n in r["modules"]) for r in rows] == [4, 16]  # one server serves both
    for mine, theirs in zip(engine_rows, rows):
        assert mine["lorahub_loss"] == pytest.approx(theirs["lorahub_loss"])  # same search
        assert theirs["examples"] == mine["examples"]
        for m in METHODS:
            assert theirs[m] == mine[m], m
            assert theirs[rc_key(m)] == pytest.approx(mine[rc_key(m)]), m


@pytest.mark.parametrize("rule", ["lorahub", "linear"])
def test_vllm_generator_rank_fits_every_choice_of_modules(world, rule):
    """The evaluation's server is started once with `max_lora_rank(K)`: every composition of K
    modules of a mixed-rank hub it is then given (exported by `compose_factors`) must fit."""
    from itertools import combinations

    from lorahub_serve.engine.export import compose_factors
    from lorahub_serve.eval.generation import VllmGenerator
    from lorahub_serve.formats import LORA_RANKS

    _, model, hub = world
    engine = Engine(str(model), str(hub), rule=rule, warmup=False)
    gen = VllmGenerator(engine)
    try:
        served = gen.max_lora_rank(3)
        assert served == (16 if rule == "lorahub" else 64) and served in LORA_RANKS
        exported = {idx: next(iter(compose_factors(engine.stack, list(idx), [1.0] * 3, rule).values()))[0].shape[0]
                    for idx in combinations(range(len(MIXED_RANKS)), 3)}
        assert max(exported.values()) <= served
        assert exported[(0, 1, 4)] == (4 if rule == "lorahub" else 12)  # trimmed, not padded to 16
    finally:
        gen.close()
        engine.close()


def test_metrics_task_scores_only_the_tasks_own_metric_with_the_same_numbers(world, engine_rows):
    """`eval --metrics task` on an options task: RC only, the same RC as `--metrics both` (same
    shots, evaluation set and searches), no EM and no generation; the report still renders."""
    from dataclasses import replace

    _, model, hub = world
    rows = run_eval(str(model), str(hub), replace(CFG, seeds=(1,), metrics="task"), progress=False,
                    generator="engine")
    (row,) = rows
    for m in METHODS:
        assert row[rc_key(m)] == engine_rows[0][rc_key(m)], m
        assert m not in row or row[m] is None, m
    assert row["generate_seconds"] == 0.0 and row["n_rc"] == 6
    assert "| -" in markdown_table(summarise(rows))  # EM cells read "-"
    with pytest.raises(ValueError, match="metrics must be one of both, task"):
        replace(CFG, metrics="em")


def test_wanted_metrics_follow_the_answer_style():
    from lorahub_serve.eval.run import wanted_metrics

    options = [Example(input="Q:", output=" a", options=("a", "b"), answer_style="text")]
    free = [Example(input="Q:", output=" 12")]
    assert wanted_metrics("task", options) == (False, True)
    assert wanted_metrics("task", free) == (True, False)
    assert wanted_metrics("both", free) == (True, True)
