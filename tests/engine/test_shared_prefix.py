"""Shared-prefix evaluation: each candidate runs the examples' common prefix once and every
suffix attends to that candidate's cached keys/values. It must change no loss."""

import numpy as np
import pytest
from peft import PeftModel

from lorahub_serve.data import from_records
from lorahub_serve.engine.adapt import Engine
from lorahub_serve.engine.evaluator import MIN_SHARED_PREFIX, shared_prefix
from lorahub_serve.engine.hub import read_manifest
from lorahub_serve.models import load_base
from lorahub_serve.prompting import EncodedExample, encode_example
from lorahub_serve.testing import reference_loss

PREAMBLE = "Answer with one word, as in the examples below, and nothing else at all. "
SHARED = [{"input": PREAMBLE + ex["input"], "output": ex["output"]} for ex in (
    {"input": "Q: is the cat blue?\nA:", "output": " no"},
    {"input": "Q: what is the capital of France?\nA:", "output": " Paris"},
    {"input": "Q: sort the words: dog cat\nA:", "output": " cat dog"},
    {"input": "Q: 2 and 3?\nA:", "output": " 5"},
)]


def test_shared_prefix_length_rules():
    ex = lambda p, t: EncodedExample(tuple(p), tuple(t))
    long = list(range(20))
    assert shared_prefix([ex(long + [1, 2], [3]), ex(long + [4], [5])]) == 20
    # capped so the last prompt token (it predicts the first output token) stays outside
    assert shared_prefix([ex(long, [3]), ex(long + [4], [5])]) == 19
    assert shared_prefix([ex(long[:MIN_SHARED_PREFIX - 1] + [1, 2], [3]),
                          ex(long[:MIN_SHARED_PREFIX - 1] + [4, 5], [6])]) == 0  # too short to pay
    assert shared_prefix([ex(long, [1])]) == 0  # one example: nothing to share


@pytest.mark.parametrize("rule", ["lorahub", "linear"])
@pytest.mark.parametrize("token_budget", [8192, 40])  # 40: prefix and suffix passes split in chunks
def test_shared_prefix_changes_no_loss(tiny_llama_dir, tiny_llama_hub, rule, token_budget):
    eng = Engine(tiny_llama_dir, tiny_llama_hub, rule=rule, token_budget=token_budget)
    ev = eng.evaluator
    try:
        ev.add_task("shared", from_records(SHARED))
        ev.add_task("other", from_records(SHARED[:1]))  # one example: the plain path, same passes
        assert ev.tasks["shared"].prefix >= MIN_SHARED_PREFIX and ev.tasks["other"].prefix == 0
        rng = np.random.default_rng(1)
        tasks = ["shared"] * 5 + ["other"] * 2 + ["shared"]
        idx = np.stack([rng.permutation(4) for _ in tasks])
        w = rng.normal(0, 0.7, (len(tasks), 4)).astype(np.float32)
        got = ev.losses(tasks, idx, w)
        ev.share_prefix = False
        ev.add_task("shared", from_records(SHARED))
        assert ev.tasks["shared"].prefix == 0
        want = ev.losses(tasks, idx, w)
    finally:
        eng.close()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_shared_prefix_equals_peft(tiny_llama_dir, tiny_llama_hub):
    """One module alone at weight 1 must give PEFT's own loss for that module."""
    eng = Engine(tiny_llama_dir, tiny_llama_hub)
    try:
        eng.evaluator.add_task("shared", from_records(SHARED))
        got = eng.evaluator.losses(["shared"], np.array([[2, 0, 1, 3]]), np.array([[1.0, 0, 0, 0]]))
    finally:
        eng.close()
    base, tok = load_base(tiny_llama_dir)
    assert shared_prefix([encode_example(tok, e) for e in from_records(SHARED)]) >= MIN_SHARED_PREFIX
    peft = PeftModel.from_pretrained(base, read_manifest(tiny_llama_hub)[2].path).eval()
    assert got[0] == pytest.approx(reference_loss(peft, tok, SHARED), abs=1e-4)
