"""Packed rows and the shared prefix (engine.packing): a candidate's examples share one row, and
the examples' common prefix is held once per row. Neither may change any loss."""

import numpy as np
import pytest
import torch
from peft import PeftModel

from lorahub_serve.data import from_records
from lorahub_serve.engine.adapt import Engine
from lorahub_serve.engine.block_attention import Blocks, block_attention, causal_matmul, causal_sdpa
from lorahub_serve.engine.hub import read_manifest
from lorahub_serve.engine.packing import (
    MIN_SHARED_PREFIX,
    Segment,
    attention_blocks,
    pack_segments,
    row_groups,
    shared_prefix,
)
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


def _ex(prompt, target):
    return EncodedExample(tuple(prompt), tuple(target))


def test_shared_prefix_length_rules():
    long = list(range(20))
    assert shared_prefix([_ex(long + [1, 2], [3]), _ex(long + [4], [5])]) == 20
    # capped so the last prompt token (it predicts the first output token) stays outside
    assert shared_prefix([_ex(long, [3]), _ex(long + [4], [5])]) == 19
    short = long[:MIN_SHARED_PREFIX - 1]
    assert shared_prefix([_ex(short + [1, 2], [3]), _ex(short + [4, 5], [6])]) == 0  # too short to pay
    assert shared_prefix([_ex(long, [1])]) == 0  # one example: nothing to share


def test_rows_hold_the_prefix_once_and_stay_under_max_row():
    assert row_groups([30, 30, 30], prefix=10, max_row=70) == [[0, 1, 2]]  # 10 + 3 x 20
    assert row_groups([30, 30, 30], prefix=10, max_row=69) == [[0, 1], [2]]
    assert row_groups([100, 5], prefix=0, max_row=50) == [[0], [1]]  # a long example gets its own row


def test_packing_pads_only_where_a_pass_costs_more():
    cands = np.arange(4)
    groups = [Segment("t", r, cands, n) for r, n in enumerate((100, 98, 60))]
    batches = pack_segments(groups, token_budget=10_000, max_pad=0.1, pass_tokens=64)
    # 98 joins 100 (8 padded tokens); 60 would waste 160 tokens: its own pass
    assert [[s.length for s in mb] for mb in batches] == [[100, 98], [60]]
    assert len(pack_segments(groups, token_budget=10_000, max_pad=0.1, pass_tokens=1000)) == 1
    assert [len(mb) for mb in pack_segments(groups, token_budget=400, max_pad=1.0)] == [1, 1, 1]


@pytest.mark.parametrize("rule", ["lorahub", "linear"])
@pytest.mark.parametrize("blocks", [True, False])  # packed rows' attention per example, or a dense mask
# 40: rows split into several micro-batches; gemma3: rows wider than its 16-token window
@pytest.mark.parametrize("arch, token_budget", [("llama", 8192), ("llama", 40), ("gemma3", 8192)])
def test_packed_rows_and_shared_prefix_change_no_loss(request, arch, rule, token_budget, blocks):
    folder, hub = (request.getfixturevalue(f"tiny_{arch}_{what}") for what in ("dir", "hub"))
    eng = Engine(folder, hub, rule=rule, token_budget=token_budget)
    ev = eng.evaluator
    assert ev.blocks  # both run block attention by default (Gemma 3 where a block fits its window)
    ev.blocks = blocks
    rng = np.random.default_rng(1)
    tasks = ["shared"] * 5 + ["other"] * 2 + ["shared"]
    k = len(eng.stack.modules)
    idx = np.stack([rng.permutation(k) for _ in tasks])
    w = rng.normal(0, 0.7, (len(tasks), k)).astype(np.float32)
    got = {}
    try:
        for name, share, max_row in (("packed+prefix", True, 512), ("packed", False, 512),
                                     ("two rows", True, 70), ("one example per row", False, 1)):
            ev.share_prefix, ev.max_row = share, max_row
            ev.add_task("shared", from_records(SHARED))
            ev.add_task("other", from_records(SHARED[1:2]))  # one example: a plain causal row
            enc = ev.tasks["shared"]
            assert (enc.prefix >= MIN_SHARED_PREFIX) == share
            rows_wanted = {"packed+prefix": {1}, "packed": {1}, "two rows": {2, 3}, "one example per row": {4}}
            assert len(enc.rows) in rows_wanted[name], (name, len(enc.rows))
            got[name] = ev.losses(tasks, idx, w)
    finally:
        eng.close()
    assert len({len(v) for v in got.values()}) == 1
    for name, losses in got.items():
        np.testing.assert_allclose(losses, got["one example per row"], rtol=1e-5, atol=1e-5, err_msg=name)


def test_packed_shared_prefix_equals_peft(tiny_llama_dir, tiny_llama_hub):
    """One module alone at weight 1 must give PEFT's own loss for that module."""
    eng = Engine(tiny_llama_dir, tiny_llama_hub)
    try:
        eng.evaluator.add_task("shared", from_records(SHARED))
        assert len(eng.evaluator.tasks["shared"].rows) == 1
        got = eng.evaluator.losses(["shared"], np.array([[2, 0, 1, 3]]), np.array([[1.0, 0, 0, 0]]))
    finally:
        eng.close()
    base, tok = load_base(tiny_llama_dir)
    assert shared_prefix([encode_example(tok, e) for e in from_records(SHARED)]) >= MIN_SHARED_PREFIX
    peft = PeftModel.from_pretrained(base, read_manifest(tiny_llama_hub)[2].path).eval()
    assert got[0] == pytest.approx(reference_loss(peft, tok, SHARED), abs=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernel", [causal_matmul, causal_sdpa])  # the CPU and the CUDA kernel
def test_block_attention_equals_the_dense_mask(dtype, kernel):
    """Rows of two layouts (prefix 3 + examples of 4, 2, 5 tokens; one plain 6-token example) in one
    micro-batch padded to width 16, GQA 4 query heads on 2 kv heads: block attention gives the dense
    mask's outputs at every real position."""
    layouts = [(3, [4, 2, 5]), (0, [6])]
    rows, dense = [], []
    for prefix, suffixes in layouts:
        members, block_of = attention_blocks(prefix, suffixes)
        rows.append((2, members, block_of))  # each row twice, as for two candidates
        seg = torch.tensor([-1] * prefix + [j for j, n in enumerate(suffixes) for _ in range(n)])
        allowed = torch.ones(len(seg), len(seg), dtype=torch.bool).tril()
        allowed &= (seg[None, :] == -1) | (seg[None, :] == seg[:, None])
        dense += [allowed, allowed]
    width, b, h, hkv, d = 16, 4, 4, 2, 8
    mask = torch.eye(width, dtype=torch.bool).repeat(b, 1, 1)
    for i, allowed in enumerate(dense):
        mask[i, :len(allowed), :len(allowed)] = allowed
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, n, width, d, generator=gen).to(dtype) for n in (h, hkv, hkv))
    blocks = Blocks.of(rows, width, "cpu")
    got, _ = block_attention(None, q, k, v, None, scaling=d ** -0.5, lorahub_blocks=blocks, kernel=kernel)
    want = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float().repeat_interleave(2, 1), v.float().repeat_interleave(2, 1), attn_mask=mask[:, None])
    want = want.transpose(1, 2)  # [B, T, H, D]
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for i, allowed in enumerate(dense):
        n = len(allowed)
        torch.testing.assert_close(got[i, :n].float(), want[i, :n], atol=tol, rtol=tol)


def test_block_attention_only_where_attention_is_plain(tiny_llama_dir, tiny_t5_dir, tiny_gemma3_dir):
    """Llama, Gemma 3 and Qwen2 run blocks (a sliding window is checked per micro-batch);
    soft-capped attention logits, bidirectional attention or an encoder-decoder keep the dense mask."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from lorahub_serve.engine.block_attention import attention_window, fits_window, supports_blocks

    llama, gemma = load_base(tiny_llama_dir)[0], load_base(tiny_gemma3_dir)[0]
    assert supports_blocks(llama) and attention_window(llama.config) is None
    assert supports_blocks(gemma) and attention_window(gemma.config) == 16
    assert not supports_blocks(load_base(tiny_t5_dir)[0])
    small = {"vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 1}
    for windowed, window in ((False, None), (True, 8)):
        cfg = Qwen2Config(**small, sliding_window=8, use_sliding_window=windowed, max_window_layers=1)
        assert supports_blocks(AutoModelForCausalLM.from_config(cfg))
        assert attention_window(cfg) == window, windowed
    assert fits_window([5, 16], 16) and not fits_window([17, 3], 16) and fits_window([999], None)
    gemma.config.use_bidirectional_attention = True
    assert not supports_blocks(gemma)
    llama.config.attn_logit_softcapping = 30.0
    assert not supports_blocks(llama)


def _block_width() -> int:
    """Width of SHARED's attention blocks (prefix + longest example) in the tiny tokenizer."""
    import tempfile

    from lorahub_serve.engine.packing import layout
    from lorahub_serve.testing import build_tokenizer

    with tempfile.TemporaryDirectory() as d:
        tok = build_tokenizer(d)
    enc = [encode_example(tok, e) for e in from_records(SHARED)]
    rows = layout(enc, shared_prefix(enc), 512, "cpu")
    assert len(rows) == 1
    return rows[0].block_members.shape[1]


@pytest.mark.parametrize("narrower, path", [(0, "blocks"), (1, "dense")])
def test_sliding_window_runs_blocks_while_they_fit(tmp_path, monkeypatch, narrower, path):
    """Gemma 3 with a window as wide as SHARED's blocks runs them as blocks; one token narrower,
    the windowed dense mask. Both give the losses of one example per row (transformers' own
    sliding mask) and of PEFT; blocks that ignored the window would not, at width + 1."""
    from lorahub_serve import testing
    from lorahub_serve.engine import evaluator as evaluator_mod

    width = _block_width()
    folder = tmp_path / "gemma3"
    model, _ = testing.tiny_gemma3(folder, sliding_window=width - narrower)
    hub = testing.random_hub(model, tmp_path / "hub", n=2, ranks=(4,), scale=3.0)
    used = []
    real_blocks, real_dense = evaluator_mod.using_blocks, evaluator_mod.Evaluator._dense_mask
    monkeypatch.setattr(evaluator_mod, "using_blocks", lambda m: used.append("blocks") or real_blocks(m))
    monkeypatch.setattr(evaluator_mod.Evaluator, "_dense_mask",
                        lambda self, *a: used.append("dense") or real_dense(self, *a))
    idx, w = np.array([[0, 1], [1, 0], [0, 1]]), np.array([[1.0, 0], [0.6, -0.8], [0, 0]], dtype=np.float32)
    eng = Engine(folder, hub)
    ev = eng.evaluator
    try:
        ev.add_task("shared", from_records(SHARED))
        assert len(ev.tasks["shared"].rows) == 1 and ev.tasks["shared"].prefix >= MIN_SHARED_PREFIX
        used.clear()
        got = ev.losses(["shared"] * 3, idx, w)
        assert set(used) == {path}, used
        ev.max_row = 1  # one example per row: no mask of ours, transformers applies the window
        ev.add_task("shared", from_records(SHARED))
        used.clear()
        want = ev.losses(["shared"] * 3, idx, w)
        assert not used
        if path == "dense":  # not vacuous: blocks that ignore the window are wrong here
            ev.max_row = 512
            ev.add_task("shared", from_records(SHARED))
            monkeypatch.setattr(evaluator_mod, "fits_window", lambda widths, window: True)
            wrong = ev.losses(["shared"] * 3, idx, w)
            assert np.abs(wrong - want).max() > 1e-4, (wrong, want)
    finally:
        eng.close()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    base, tok = load_base(folder)
    peft = PeftModel.from_pretrained(base, read_manifest(hub)[0].path).eval()
    assert got[0] == pytest.approx(reference_loss(peft, tok, SHARED), abs=1e-4)
