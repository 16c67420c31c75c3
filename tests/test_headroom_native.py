"""`eval --suite headroom` on a reasoning-gym task reports the generator's own score_answer of
each method's answers beside exact match (tiny Llama, a random oracle): the row's `native`
holds it for the engine's methods and the PEFT ones, and it is never below exact match on a
task whose scorer gives exact answers full credit."""


import torch

from lorahub_serve import testing
from lorahub_serve.eval.headroom import HeadroomConfig, run_headroom_eval
from lorahub_serve.eval.headroom_report import markdown, summarise
from lorahub_serve.models import load_base


def test_headroom_rows_carry_score_answer_beside_exact_match(tiny_llama_dir, tiny_llama_hub, tmp_path):
    torch.set_num_threads(1)
    task = "rg/gcd@le20"
    suite = testing.one_task_suite(load_base(tiny_llama_dir)[0], tmp_path, task, closeness="config-shift",
                                   majority=30.0)
    cfg = HeadroomConfig(suite=suite, seeds=(1, 2), limit=6, budget=4, modules=2, dtype="float32",
                         methods=("lora_ft",))
    rows = run_headroom_eval(str(tiny_llama_dir), str(tiny_llama_hub), cfg, progress=False)
    for row in rows:  # seed 2 takes zero-shot and the oracle from seed 1's cache, with their scores
        assert set(row["native"]) == {"zero_shot", "lorahub", "lora_ft", "oracle"}
        for m, own in row["native"].items():
            assert 0.0 <= own <= 100.0 and own >= row[m] - 1e-9, m
    assert rows[0]["native"]["oracle"] == rows[1]["native"]["oracle"]
    md = markdown(rows, summarise(rows))
    assert "score_answer |" in md and "generator's own score" in md
