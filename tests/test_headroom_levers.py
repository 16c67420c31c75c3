"""The levers beyond the paper as headroom-eval methods (`eval --suite headroom --methods
lorahub_refine_w,...`) on a tiny Llama: each is the adapter `adapt` would export, scored by PEFT;
the same composition scores the same through that path as on the engine; refinement starts from
lorahub's own composition and leaves it as it was."""

import json

import numpy as np
import pytest
import torch

from lorahub_serve import testing
from lorahub_serve.eval.headroom import LEVERS, HeadroomConfig, run_headroom_eval
from lorahub_serve.models import load_base

# the tiny Llama has 2 blocks, so 4 layer groups are refused (by name, tests/engine/test_layer_groups.py)
TINY_LEVERS = tuple(m for m in LEVERS if "g4" not in m)
WORDS = ("cat", "dog", "red", "blue", "green", "yes", "no")


@pytest.fixture(scope="module")
def lever_row(tiny_llama_dir, tiny_llama_hub, tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("levers")
    task = str(tmp / "words.jsonl")
    examples = [{"input": f"Q: {WORDS[i % 7]} {WORDS[(i * 3) % 7]}?\nA:", "output": f" {WORDS[(i * 5) % 7]}"}
                for i in range(14)]
    (tmp / "words.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    suite = testing.one_task_suite(load_base(tiny_llama_dir)[0], tmp, task, closeness="near")
    cfg = HeadroomConfig(suite=suite, seeds=(1,), limit=6, budget=8, modules=2, dtype="float32",
                         refine_steps=3, methods=TINY_LEVERS)
    (row,) = run_headroom_eval(str(tiny_llama_dir), str(tiny_llama_hub), cfg, progress=False)
    return row


def test_every_lever_scores(lever_row):
    for m in ("zero_shot", "lorahub", *TINY_LEVERS, "oracle"):
        assert 0.0 <= lever_row[m] <= 100.0, m
    assert not {"icl", "lora_ft", "arrow"} & set(lever_row)


def test_the_export_path_scores_lorahubs_composition_as_the_engine_does(lever_row):
    assert lever_row["lorahub_export"] == lever_row["lorahub"]


def test_refinement_starts_from_lorahub_and_leaves_it_as_it_was(lever_row):
    levers = lever_row["levers"]
    for name in ("lorahub_refine_w", "lorahub_refine_f"):
        ref = levers[name]["refine"]
        assert ref["steps_asked"] == 3 and 0 <= ref["steps_kept"] <= 3
        assert ref["loss_after"] <= ref["loss_before"] + 1e-6, name
    assert levers["lorahub_refine_f"]["refine"]["exact_composition"] is False
    # the row's lorahub weights are the search's, not the refined ones
    assert len(lever_row["lorahub_weights"]) == 2


def test_layer_groups_search_a_weight_per_module_per_group(lever_row):
    levers = lever_row["levers"]
    assert np.asarray(levers["lorahub_g2"]["weights"]).shape == (2, 2)  # [G, K]


def test_adaptation_time_is_recorded_beside_lorahubs(lever_row):
    from lorahub_serve.eval.headroom_report import summarise

    secs = summarise([lever_row])["adapt_seconds"]
    assert secs["lorahub"] > 0
    # refinement starts from lorahub's search, so it costs that search and more
    assert secs["lorahub_refine_w"] > secs["lorahub"] and secs["lorahub_refine_f"] > secs["lorahub"]
    assert secs["lorahub_export"] >= secs["lorahub"]
