"""`lorahub-serve eval`: scoring, the report, and the two answer back ends agreeing.

The back-end test runs one real BBH task (sports_understanding) end to end on a tiny random
Llama with a random hub: search, best single module, then greedy answers from the engine and from
vLLM behind our server. Both must give the same answers for every method, since vLLM serves the
exported compositions that the engine applies on the fly.
"""

import json

import numpy as np
import pytest

from lorahub_serve import testing
from lorahub_serve.evaluation import EvalConfig, accuracy, run_eval, summarise, write_report

TASK = "sports_understanding"


def test_accuracy_uses_the_reference_normalisation():
    assert accuracy([" Yes.", "(A)", "no"], ["yes", "(a)", "yes"]) == pytest.approx(200 / 3)
    assert accuracy([], []) == 0.0


def test_eval_config_refuses_tasks_outside_bbh():
    with pytest.raises(ValueError, match="not BBH tasks"):
        EvalConfig(tasks=("navigate", "arithmetic"))


def test_unknown_generator_is_refused(tiny_llama_dir, tiny_llama_hub):
    with pytest.raises(ValueError, match="generator must be"):
        run_eval(str(tiny_llama_dir), str(tiny_llama_hub), EvalConfig(tasks=(TASK,), seeds=(1,), limit=2,
                                                                      budget=2), generator="gpu", progress=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    model, _ = testing.tiny_llama_for_vllm(root / "model")
    hub = testing.random_hub(model, root / "hub", n=4, scale=3.0)
    return root, root / "model", hub


CFG = EvalConfig(tasks=(TASK,), seeds=(1, 2), limit=6, budget=6, modules=3)


@pytest.fixture(scope="module")
def engine_rows(world):
    _, model, hub = world
    return run_eval(str(model), str(hub), CFG, progress=False, generator="engine")


def test_engine_rows_and_report(world, engine_rows):
    root, _, _ = world
    assert [(r["task"], r["seed"]) for r in engine_rows] == [(TASK, 1), (TASK, 2)]
    for r in engine_rows:
        assert r["generator"] == "engine" and r["n_eval"] == 6
        for m in ("zero_shot", "icl", "lorahub", "lorahub_ngopt", "best_single"):
            assert 0.0 <= r[m] <= 100.0 and len(r["examples"]) == 5
        assert np.isfinite(r["lorahub_loss"]) and r["optimizer"] and r["input_tokens_icl"] > r["input_tokens"]
    assert engine_rows[0]["zero_shot"] == engine_rows[1]["zero_shot"]  # fixed evaluation set
    # The compositions differ (scale-3 random modules), so comparing back ends below means something.
    answers = engine_rows[0]["examples"][0]
    assert len({answers[m] for m in ("zero_shot", "lorahub", "lorahub_ngopt", "best_single")}) >= 3
    paths = write_report(engine_rows, root / "out", "bbh_test", "lorahub-serve eval --test")
    md = paths["md"].read_text()
    assert "`lorahub-serve eval --test`" in md and f"| {TASK} | 50.0 |" in md and "**average**" in md
    saved = json.loads(paths["json"].read_text())
    assert saved["summary"] == summarise(engine_rows) and saved["meta"]["commit"]
    assert paths["png"].stat().st_size > 1000


@pytest.mark.vllm
def test_vllm_answers_equal_the_engine(world, engine_rows):
    pytest.importorskip("vllm", reason="vLLM is not installed here")
    _, model, hub = world
    rows = run_eval(str(model), str(hub), CFG, progress=False, generator="vllm")
    assert [r["generator"] for r in rows] == ["vllm", "vllm"]
    for mine, theirs in zip(engine_rows, rows):
        assert mine["lorahub_loss"] == pytest.approx(theirs["lorahub_loss"])  # same search
        assert theirs["examples"] == mine["examples"]
        for m in ("zero_shot", "icl", "lorahub", "lorahub_ngopt", "best_single"):
            assert theirs[m] == mine[m], m
