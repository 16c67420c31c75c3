"""Batched few-shot loss of many candidates: the function the search minimises.

`Evaluator.losses(tasks, module_idx, weights)` returns, per candidate c, the mean cross-entropy
of its task's output tokens given the inputs, with the base model adapted by candidate c's
composition. All candidates (of one or many tasks) run through shared forward passes:
rows are (candidate, example) pairs, grouped example-major so a group's rows have one length
and need no padding, and groups are packed into micro-batches under a token budget.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.examples import Example, ExampleError
from ..prompting import EncodedExample, encode_example, encode_seq2seq
from .hub import HubStack
from .multilora import attach


@dataclass(frozen=True)
class MicroBatch:
    rows: list[tuple[int, EncodedExample]]  # (candidate index, example)

    @property
    def width(self) -> int:
        return max(e.length for _, e in self.rows)


def pack_rows(groups: list[tuple[list[int], EncodedExample]], token_budget: int) -> list[MicroBatch]:
    """Pack (candidates, example) groups into micro-batches of at most `token_budget` padded tokens.

    Longest groups first, so neighbours have similar lengths and padding stays small.
    """
    batches: list[MicroBatch] = []
    rows: list[tuple[int, EncodedExample]] = []
    width = 0
    for cands, ex in sorted(groups, key=lambda g: -g[1].length):
        per_chunk = max(1, token_budget // ex.length)
        for start in range(0, len(cands), per_chunk):
            chunk = [(c, ex) for c in cands[start:start + per_chunk]]
            w = max(width, ex.length)
            if rows and (len(rows) + len(chunk)) * w > token_budget:
                batches.append(MicroBatch(rows))
                rows, w = [], ex.length
            rows.extend(chunk)
            width = w
    if rows:
        batches.append(MicroBatch(rows))
    return batches


class Evaluator:
    """Holds the base model with the hub attached; evaluates batches of candidates.

    stack: the hub's factors (all modules a candidate may name); rule: "lorahub" | "linear";
    backend: "auto" | "torch" | "triton"; token_budget: padded tokens per micro-batch.
    """

    def __init__(self, model, tokenizer, stack: HubStack, rule: str = "lorahub", backend: str = "auto",
                 token_budget: int = 8192, max_length: int | None = None, truncate: bool = False):
        self.model, self.tokenizer, self.stack = model.eval(), tokenizer, stack
        self.rule, self.token_budget = rule, token_budget
        self.seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        self.max_length = max_length or getattr(model.config, "max_position_embeddings", None)
        self.truncate = truncate
        self.handle = attach(model, stack, rule, backend)
        self.device = next(model.parameters()).device
        self.tasks: dict[str, list[EncodedExample]] = {}
        self.evaluations = 0
        self.seconds = 0.0

    def close(self) -> None:
        self.handle.detach()

    def add_task(self, key: str, examples: Sequence[Example], *, eos: bool = True,
                 truncate: bool | None = None) -> None:
        """Encode `examples` under `key` (replacing any task of that name).

        eos: score the output's EOS token too (the search's objective) or the output alone (rank
        classification); truncate: drop a too-long prompt's oldest tokens instead of raising
        (default: the evaluator's setting).
        """
        if not examples:
            raise ExampleError(f"task {key!r}: no few-shot examples; at least one is needed")
        enc = encode_seq2seq if self.seq2seq else encode_example
        kwargs = {"eos": eos} if self.seq2seq else {
            "eos": eos, "truncate": self.truncate if truncate is None else truncate}
        encoded = []
        for i, ex in enumerate(examples):
            try:
                encoded.append(enc(self.tokenizer, ex, self.max_length, **kwargs))
            except ValueError as e:
                raise ExampleError(f"task {key!r}, example {i}: {e}") from None
        self.tasks[key] = encoded

    def remove_task(self, key: str) -> None:
        """Forget a task's encoded examples (a no-op for a key never added)."""
        self.tasks.pop(key, None)

    @torch.inference_mode()
    def losses(self, tasks: Sequence[str], module_idx: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Mean output-token cross-entropy per candidate.

        tasks [C] task keys; module_idx [C, K] int (indices into the stack); weights [C, K].
        Returns [C] float64 losses (no L1 term: that belongs to the search objective).
        """
        t0 = time.perf_counter()
        weights = np.asarray(weights, dtype=np.float32)
        module_idx = np.asarray(module_idx, dtype=np.int64)
        if weights.shape != module_idx.shape or weights.ndim != 2 or len(tasks) != len(weights):
            raise ValueError(f"tasks {len(tasks)}, module_idx {module_idx.shape} and weights "
                             f"{weights.shape} must agree as [C], [C, K], [C, K]")
        if not np.isfinite(weights).all():
            raise ValueError("candidate weights contain NaN or infinite values")
        if module_idx.size and (module_idx.min() < 0 or module_idx.max() >= len(self.stack.modules)):
            raise ValueError(f"module_idx must lie in [0, {len(self.stack.modules)})")
        unknown = sorted(set(tasks) - set(self.tasks))
        if unknown:
            raise KeyError(f"tasks {unknown} were not added to the evaluator (call add_task first)")
        routing = self.handle.routing
        routing.module_idx = torch.as_tensor(module_idx, device=self.device)
        routing.weights = torch.as_tensor(weights, device=self.device)
        groups: dict[tuple[str, int], list[int]] = {}
        for c, task in enumerate(tasks):
            for e in range(len(self.tasks[task])):
                groups.setdefault((task, e), []).append(c)
        packed = pack_rows([(cands, self.tasks[t][e]) for (t, e), cands in groups.items()],
                           self.token_budget)
        ce_sum = torch.zeros(len(tasks), dtype=torch.float64)
        n_tok = torch.zeros(len(tasks), dtype=torch.float64)
        try:
            for mb in packed:
                cand = torch.tensor([c for c, _ in mb.rows], device=self.device)
                routing.row_cand = cand
                ce, count = self._seq2seq_ce(mb) if self.seq2seq else self._causal_ce(mb)
                ce_sum.index_add_(0, cand.cpu(), ce.double().cpu())
                n_tok.index_add_(0, cand.cpu(), count.double().cpu())
        finally:
            routing.row_cand = routing.module_idx = routing.weights = None
        self.evaluations += len(tasks)
        self.seconds += time.perf_counter() - t0
        return (ce_sum / n_tok.clamp(min=1)).numpy()

    def _causal_ce(self, mb: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row summed CE over the output tokens; logits only at those positions."""
        b, width = len(mb.rows), mb.width
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((b, width), pad, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        pos_row, pos_col, labels = [], [], []
        for i, (_, ex) in enumerate(mb.rows):
            seq = ex.prompt_ids + ex.target_ids
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
            p = len(ex.prompt_ids)
            pos_row += [i] * len(ex.target_ids)
            pos_col += range(p - 1, p - 1 + len(ex.target_ids))  # position t predicts token t+1
            labels += ex.target_ids
        body = getattr(self.model, self.model.base_model_prefix)
        hidden = body(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
        sel = hidden[torch.tensor(pos_row), torch.tensor(pos_col)]  # [M, H]
        logits = self.model.get_output_embeddings()(sel).float()  # [M, V]
        ce = F.cross_entropy(logits, torch.tensor(labels, device=self.device), reduction="none")
        rows = torch.tensor(pos_row, device=self.device)
        per_row = torch.zeros(b, device=self.device).index_add_(0, rows, ce)
        count = torch.zeros(b, device=self.device).index_add_(0, rows, torch.ones_like(ce))
        return per_row, count

    def _seq2seq_ce(self, mb: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
        b = len(mb.rows)
        pad = self.tokenizer.pad_token_id or 0
        w_in = max(len(ex.prompt_ids) for _, ex in mb.rows)
        w_out = max(len(ex.target_ids) for _, ex in mb.rows)
        ids = torch.full((b, w_in), pad, dtype=torch.long)
        mask = torch.zeros((b, w_in), dtype=torch.long)
        labels = torch.full((b, w_out), -100, dtype=torch.long)
        for i, (_, ex) in enumerate(mb.rows):
            ids[i, : len(ex.prompt_ids)] = torch.tensor(ex.prompt_ids)
            mask[i, : len(ex.prompt_ids)] = 1
            labels[i, : len(ex.target_ids)] = torch.tensor(ex.target_ids)
        dec_in = self.model._shift_right(labels.masked_fill(labels == -100, pad))
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                            decoder_input_ids=dec_in.to(self.device)).logits.float()
        labels = labels.to(self.device)
        ce = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none", ignore_index=-100)
        return ce.sum(1), (labels != -100).sum(1).float()
