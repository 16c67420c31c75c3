"""The one row-padding helper: right padding for scoring, left padding for generation."""

from types import SimpleNamespace

import torch

from lorahub_serve.prompting import IGNORE, causal_batch, pad_id, pad_rows


def test_pad_rows_right_and_left():
    rows = [[1, 2, 3], [4], []]
    assert pad_rows(rows, 0).tolist() == [[1, 2, 3], [4, 0, 0], [0, 0, 0]]
    assert pad_rows(rows, 9, left=True).tolist() == [[1, 2, 3], [9, 9, 4], [9, 9, 9]]
    assert pad_rows([], 0).shape == (0, 0) and pad_rows(rows, 0).dtype == torch.long


def test_causal_batch_scores_the_targets_only():
    ids, mask, labels = causal_batch([((1, 2), (3,)), ((4,), (5, 6))], pad=0)
    assert ids.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 1]]
    assert labels.tolist() == [[IGNORE, IGNORE, 3], [IGNORE, 5, 6]]
    ids, mask, labels = causal_batch([((1,), (2,)), ((3, 4, 5), (6,))], pad=7)
    assert ids[0].tolist() == [1, 2, 7, 7] and mask[0].tolist() == [1, 1, 0, 0]
    assert labels[0].tolist() == [IGNORE, 2, IGNORE, IGNORE]


def test_pad_id_falls_back_to_eos_then_zero():
    assert pad_id(SimpleNamespace(pad_token_id=3, eos_token_id=2)) == 3
    assert pad_id(SimpleNamespace(pad_token_id=None, eos_token_id=2)) == 2
    assert pad_id(SimpleNamespace(pad_token_id=None, eos_token_id=None)) == 0
