"""How a task's few-shot examples are laid out in rows, and rows in micro-batches.

Every candidate of a task sees the same examples, so the layout is computed once per task
(`Evaluator.add_task`) and repeated for every candidate:

- Packed rows (decoder-only). A candidate's examples are concatenated into one row (or a few,
  up to `max_row` tokens each), so all of a task's candidates have rows of one length and need no
  padding, and a few passes cover many examples. An attention mask keeps the examples apart:
  each example's tokens see only themselves (causally) and the shared prefix.
- Shared prefix. When the examples start with the same tokens (an instruction, BBH's question
  preamble: 15–30 % of the tokens on half the BBH tasks), the row holds that prefix once and
  every example in the row attends to it. Exact: under causal attention the prefix does not
  depend on what follows.
- Micro-batches. (row × candidates) groups are packed under a token budget, longest first; a
  group joins a micro-batch only when the padding it needs costs less than another pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lorahub_serve.prompting import EncodedExample

MIN_SHARED_PREFIX = 8  # shorter prefixes save less than they complicate
MAX_ROW = 512  # tokens per packed row: beyond this, masked-out attention costs more than it saves
MAX_PAD = 0.1  # a group may be padded by this share of the width...
PASS_TOKENS = 64  # ...or by this many tokens: what one more pass costs (weights streamed once per pass)
CPU_TOKEN_BUDGET = 2048  # measured (2-core AVX-512 CPU, SmolLM2-135M): 8192-token micro-batches
# ran 3 % (fp32) to 25 % (bf16) slower per token than 2048-token ones; activations leave the cache
CUDA_TOKEN_BUDGET = 8192  # a GPU wants big passes


def default_token_budget(device) -> int:
    """Padded tokens per micro-batch when none is given: by the kind of device."""
    return CUDA_TOKEN_BUDGET if torch.device(device).type == "cuda" else CPU_TOKEN_BUDGET


@dataclass(frozen=True)
class PackedRow:
    """One row of a task's layout, as device tensors.

    ids [L] token ids; positions [L] position ids (each example continues from the prefix);
    allowed [L, L] bool, allowed[q, k] = query q may attend to key k (None: one example, plain
    causal); target_pos [T] the positions whose logits predict labels [T]; target_example [T] the
    task's example index of each label (per-example losses); block_members [S, W] the row positions
    of each example's attention block, the prefix then the example (-1: padding), and block_of [L]
    each position's place in them, block·W + offset (`block_attention`).
    """

    ids: torch.Tensor
    positions: torch.Tensor
    allowed: torch.Tensor | None
    target_pos: torch.Tensor
    labels: torch.Tensor
    target_example: torch.Tensor
    block_members: torch.Tensor | None = None  # None: encoder-decoder rows
    block_of: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Segment:
    """Rows [start, start + len(cands)) of a micro-batch: row `row` of task `task`'s layout, once
    per candidate in `cands` (all of one length: no padding inside a segment)."""

    task: str
    row: int
    cands: np.ndarray  # [n] int64 candidate indices
    length: int


def shared_prefix(encoded: Sequence[EncodedExample]) -> int:
    """Tokens all examples start with, capped so each example keeps its last prompt token (the
    position that predicts its first output token) outside the prefix. 0 when not worth sharing."""
    if len(encoded) < 2:
        return 0
    seqs = [e.prompt_ids + e.target_ids for e in encoded]
    cap = min(len(e.prompt_ids) for e in encoded) - 1
    n = 0
    while n < cap and len({s[n] for s in seqs}) == 1:
        n += 1
    return n if n >= MIN_SHARED_PREFIX else 0


def row_groups(lengths: Sequence[int], prefix: int, max_row: int) -> list[list[int]]:
    """Example indices per row, in order: the prefix once, then each example's suffix
    (length - prefix tokens), a new row when `max_row` would be passed."""
    rows: list[list[int]] = []
    cur: list[int] = []
    size = prefix
    for i, n in enumerate(lengths):
        if cur and size + n - prefix > max_row:
            rows.append(cur)
            cur, size = [], prefix
        cur.append(i)
        size += n - prefix
    if cur:
        rows.append(cur)
    return rows


def layout(encoded: Sequence[EncodedExample], prefix: int, max_row: int, device) -> tuple[PackedRow, ...]:
    """A task's packed rows. Each example's input is its prompt and output but the output's last
    token (no prediction after it is scored)."""
    seqs = [list(e.prompt_ids + e.target_ids)[:-1] for e in encoded]
    rows = []
    for members in row_groups([len(s) for s in seqs], prefix, max_row):
        ids, pos, seg = list(seqs[members[0]][:prefix]), list(range(prefix)), [-1] * prefix
        target_pos: list[int] = []
        labels: list[int] = []
        target_example: list[int] = []
        for i in members:
            start = len(ids) - prefix  # row offset of this example's token `prefix`
            e, s = encoded[i], seqs[i]
            ids += s[prefix:]
            pos += range(prefix, len(s))
            seg += [i] * (len(s) - prefix)
            target_pos += [start + p for p in range(len(e.prompt_ids) - 1, e.length - 1)]
            labels += e.target_ids
            target_example += [i] * len(e.target_ids)
        block_members, block_of = attention_blocks(prefix, [len(seqs[i]) - prefix for i in members])
        allowed = None
        if len(members) > 1:
            segs = torch.tensor(seg)
            causal = torch.ones(len(ids), len(ids), dtype=torch.bool).tril()
            allowed = causal & ((segs[None, :] == -1) | (segs[None, :] == segs[:, None]))
            allowed = allowed.to(device)
        rows.append(PackedRow(*(torch.tensor(v, dtype=torch.long).to(device) for v in (ids, pos)),
                              allowed, *(torch.tensor(v, dtype=torch.long).to(device)
                                         for v in (target_pos, labels, target_example)),
                              block_members.to(device), block_of.to(device)))
    return tuple(rows)


def attention_blocks(prefix: int, suffixes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A row's attention blocks: [prefix; example] per example (the prefix's own outputs come
    from the first block). Returns (members [S, W], block_of [L]), as in `PackedRow`."""
    w = prefix + max(suffixes)
    members = torch.full((len(suffixes), w), -1, dtype=torch.long)
    block_of = [*range(prefix)]
    start = prefix
    for j, n in enumerate(suffixes):
        members[j, :prefix] = torch.arange(prefix)
        members[j, prefix:prefix + n] = torch.arange(start, start + n)
        block_of += range(j * w + prefix, j * w + prefix + n)
        start += n
    return members, torch.tensor(block_of, dtype=torch.long)


def pack_segments(groups: list[Segment], token_budget: int, max_pad: float = MAX_PAD,
                  pass_tokens: int = PASS_TOKENS) -> list[list[Segment]]:
    """Pack (row × candidates) groups into micro-batches of at most `token_budget` padded tokens,
    splitting a group that alone exceeds it. Longest first, so neighbours have similar lengths; a
    group whose rows would be padded by more than `max_pad` of the width and more than
    `pass_tokens` tokens in all starts a new micro-batch instead."""
    batches: list[list[Segment]] = []
    cur: list[Segment] = []
    rows = width = 0
    for g in sorted(groups, key=lambda g: -g.length):
        per_chunk = max(1, token_budget // g.length)
        for start in range(0, len(g.cands), per_chunk):
            seg = Segment(g.task, g.row, g.cands[start:start + per_chunk], g.length)
            w = max(width, seg.length)
            waste = len(seg.cands) * (w - seg.length)
            too_padded = seg.length < (1 - max_pad) * w and waste > pass_tokens
            if cur and ((rows + len(seg.cands)) * w > token_budget or too_padded):
                batches.append(cur)
                cur, rows, w = [], 0, seg.length
            cur.append(seg)
            rows, width = rows + len(seg.cands), w
    if cur:
        batches.append(cur)
    return batches
