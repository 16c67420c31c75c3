"""Batched few-shot loss of many candidates: the function the search minimises.

`Evaluator.losses(tasks, module_idx, weights)` returns, per candidate c, the mean cross-entropy
of its task's output tokens given the inputs, with the base model adapted by candidate c's
composition. All candidates (of one or many tasks) run through shared forward passes:
rows are (candidate, example) pairs, grouped example-major so a group's rows have one length
and need no padding, and groups are packed into micro-batches under a token budget.

Everything per task lives on the model's device from `add_task` on (token ids, target
positions, labels), micro-batches are built by tensor indexing with no per-row Python, and the
losses accumulate on the device: one host sync per `losses` call.

Shared prefix (decoder-only): a task's examples often start with the same tokens (an instruction,
BBH's question preamble: 15-30 % of the tokens on half the BBH tasks). Under causal attention
the prefix's keys and values do not depend on what follows, so each candidate runs the prefix
once, and every example's suffix attends to that candidate's cached prefix. Exact, not an
approximation; `share_prefix=False` turns it off.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.examples import Example, ExampleError
from ..prompting import EncodedExample, encode_example, encode_seq2seq, pad_id
from .hub import HubStack
from .multilora import attach


@dataclass(frozen=True)
class EncodedTask:
    """One task's few-shot examples, encoded once, as device tensors.

    Per example e: ids[e] [L_e] (causal: prompt + target but its last token; seq2seq: the encoder input),
    labels[e] [T_e] (the tokens loss is taken on), target_pos[e] [T_e] (causal: the position
    whose logits predict each label; position t predicts token t+1).
    """

    examples: tuple[EncodedExample, ...]
    ids: tuple[torch.Tensor, ...]
    labels: tuple[torch.Tensor, ...]
    target_pos: tuple[torch.Tensor, ...]
    prefix: int = 0  # tokens every example starts with, run once per candidate (0: none shared)

    @property
    def n_target(self) -> int:  # the denominator of the task's mean cross-entropy
        return sum(len(e.target_ids) for e in self.examples)

    def __len__(self) -> int:
        return len(self.examples)


@dataclass(frozen=True)
class Segment:
    """Rows [start, start + len(cands)) of a micro-batch: example `example` of task `task`, once
    per candidate in `cands` (all of one length: no padding inside a segment)."""

    task: str
    example: int
    cands: np.ndarray  # [n] int64 candidate indices
    length: int


MIN_SHARED_PREFIX = 8  # shorter prefixes save less than the extra pass costs


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


def pack_segments(groups: list[Segment], token_budget: int) -> list[list[Segment]]:
    """Pack (example × candidates) groups into micro-batches of at most `token_budget` padded
    tokens, splitting a group that alone exceeds it. Longest first, so neighbours have similar
    lengths and padding stays small."""
    batches: list[list[Segment]] = []
    cur: list[Segment] = []
    rows = width = 0
    for g in sorted(groups, key=lambda g: -g.length):
        per_chunk = max(1, token_budget // g.length)
        for start in range(0, len(g.cands), per_chunk):
            seg = Segment(g.task, g.example, g.cands[start:start + per_chunk], g.length)
            w = max(width, seg.length)
            if cur and (rows + len(seg.cands)) * w > token_budget:
                batches.append(cur)
                cur, rows, w = [], 0, seg.length
            cur.append(seg)
            rows, width = rows + len(seg.cands), w
    if cur:
        batches.append(cur)
    return batches


class Evaluator:
    """Holds the base model with the hub attached; evaluates batches of candidates.

    stack: the hub's factors (all modules a candidate may name); rule: "lorahub" | "linear";
    backend: "auto" | "torch" | "triton"; token_budget: padded tokens per micro-batch.
    """

    def __init__(self, model, tokenizer, stack: HubStack, rule: str = "lorahub", backend: str = "auto",
                 token_budget: int = 8192, max_length: int | None = None, truncate: bool = False,
                 share_prefix: bool = True):
        self.model, self.tokenizer, self.stack = model.eval(), tokenizer, stack
        self.rule, self.token_budget = rule, token_budget
        self.seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        self.max_length = max_length or getattr(model.config, "max_position_embeddings", None)
        self.truncate = truncate
        self.share_prefix = share_prefix and not self.seq2seq
        self.handle = attach(model, stack, rule, backend)
        self.device = next(model.parameters()).device
        self.pad_id = pad_id(tokenizer)
        self.tasks: dict[str, EncodedTask] = {}
        self.evaluations = 0
        self.seconds = 0.0
        self.warmup_seconds = 0.0

    def close(self) -> None:
        self.handle.detach()

    def add_task(self, key: str, examples: Sequence[Example], *, eos: bool = True,
                 truncate: bool | None = None) -> None:
        """Encode `examples` under `key` (replacing any task of that name) into device tensors.

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
        self.tasks[key] = self._to_device(encoded)

    def _to_device(self, encoded: list[EncodedExample]) -> EncodedTask:
        def dev(values) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long).to(self.device, non_blocking=True)

        if self.seq2seq:
            ids = [dev(e.prompt_ids) for e in encoded]
            pos = [dev(range(len(e.target_ids))) for e in encoded]
        else:  # the last token is never an input whose prediction is scored: leave it out
            ids = [dev((e.prompt_ids + e.target_ids)[:-1]) for e in encoded]
            pos = [dev(range(len(e.prompt_ids) - 1, e.length - 1)) for e in encoded]
        prefix = shared_prefix(encoded) if self.share_prefix else 0
        return EncodedTask(tuple(encoded), tuple(ids), tuple(dev(e.target_ids) for e in encoded), tuple(pos),
                           prefix)

    def remove_task(self, key: str) -> None:
        """Forget a task's encoded examples (a no-op for a key never added)."""
        self.tasks.pop(key, None)

    def warmup(self) -> float:
        """One tiny batch through every adapted layer, so kernel JIT and allocator start-up are paid
        here, at engine start, and not by the first generation of the first search. Returns seconds."""
        t0, counters = time.perf_counter(), (self.evaluations, self.seconds)
        key = "\0warmup"
        self.add_task(key, [Example("warm up", " ok")], truncate=True)
        try:
            k = min(2, len(self.stack.modules))
            self.losses([key, key], np.tile(np.arange(k), (2, 1)), np.full((2, k), 0.5, dtype=np.float32))
        finally:
            self.remove_task(key)
            self.evaluations, self.seconds = counters  # not charged to any search
        self.warmup_seconds = time.perf_counter() - t0
        return self.warmup_seconds

    def _validate(self, tasks, module_idx: np.ndarray, weights: np.ndarray) -> None:
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

    def _groups(self, tasks: Sequence[str]) -> list[Segment]:
        """One group per (task, example): the candidates of that task (per task, not per row)."""
        keys = np.asarray(tasks, dtype=object)
        groups = []
        for task in dict.fromkeys(tasks):
            cands = np.flatnonzero(keys == task)
            enc = self.tasks[task]
            groups += [Segment(task, e, cands, len(enc.ids[e])) for e in range(len(enc))]
        return groups

    @torch.inference_mode()
    def losses(self, tasks: Sequence[str], module_idx: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Mean output-token cross-entropy per candidate.

        tasks [C] task keys; module_idx [C, K] int (indices into the stack); weights [C, K].
        Returns [C] float64 losses (no L1 term: that belongs to the search objective).
        """
        t0 = time.perf_counter()
        weights = np.asarray(weights, dtype=np.float32)
        module_idx = np.asarray(module_idx, dtype=np.int64)
        self._validate(tasks, module_idx, weights)
        ce_sum = torch.zeros(len(tasks), dtype=torch.float32, device=self.device)
        groups = self._groups(tasks)
        plain = [g for g in groups if not self.tasks[g.task].prefix]
        with self.handle.route(module_idx, weights) as routing:
            for mb in pack_segments(plain, self.token_budget):
                row_cand = self._host_to_device(np.concatenate([s.cands for s in mb]))
                routing.row_cand = row_cand
                ce, cand = self._seq2seq_ce(mb, row_cand) if self.seq2seq else self._causal_ce(mb, row_cand)
                ce_sum.index_add_(0, cand, ce)
            for task in dict.fromkeys(g.task for g in groups if self.tasks[g.task].prefix):
                self._prefixed_ce(task, [g for g in groups if g.task == task], routing, ce_sum)
        n_tok = np.array([self.tasks[t].n_target for t in tasks], dtype=np.float64)
        out = ce_sum.double().cpu().numpy() / np.maximum(n_tok, 1)  # the one host sync
        self.evaluations += len(tasks)
        self.seconds += time.perf_counter() - t0
        return out

    def _host_to_device(self, arr: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(arr)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def _prefixed_ce(self, task: str, groups: list[Segment], routing, ce_sum: torch.Tensor) -> None:
        """A task whose examples share `prefix` tokens: the prefix once per candidate (its keys and
        values cached), then the examples' suffixes against their candidate's cached prefix."""
        from transformers import DynamicCache

        enc = self.tasks[task]
        cands = groups[0].cands  # the task's candidates, ascending; every group has them all
        body = getattr(self.model, self.model.base_model_prefix)
        prefix_ids = enc.ids[0][: enc.prefix]
        per_chunk = max(1, self.token_budget // enc.prefix)
        kv: list[tuple[list, list]] = []
        for start in range(0, len(cands), per_chunk):
            routing.row_cand = self._host_to_device(cands[start:start + per_chunk])
            ids = prefix_ids.expand(len(routing.row_cand), -1)
            cache = body(input_ids=ids, use_cache=True).past_key_values
            kv.append(([layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]))
        keys = [torch.cat([k[i] for k, _ in kv]) for i in range(len(kv[0][0]))]  # per layer [C_t, h, P, d]
        values = [torch.cat([v[i] for _, v in kv]) for i in range(len(kv[0][1]))]
        suffixes = [Segment(g.task, g.example, g.cands, g.length - enc.prefix) for g in groups]
        for mb in pack_segments(suffixes, self.token_budget):
            host_cand = np.concatenate([s.cands for s in mb])
            row_cand = self._host_to_device(host_cand)
            rows = self._host_to_device(np.searchsorted(cands, host_cand))  # each row's prefix cache row
            cache = DynamicCache(ddp_cache_data=[(k[rows], v[rows]) for k, v in zip(keys, values)])
            routing.row_cand = row_cand
            ce, cand = self._causal_ce(mb, row_cand, offset=enc.prefix, cache=cache)
            ce_sum.index_add_(0, cand, ce)

    def _causal_ce(self, mb: list[Segment], row_cand: torch.Tensor, offset: int = 0,
                   cache=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token CE of the output tokens [M] and each token's candidate [M]; logits only at
        those positions. Rows are right-padded and run without an attention mask: under the causal
        mask a real token never sees the padding after it, and the fast causal attention applies.
        offset/cache: the rows continue a cached prefix of `offset` tokens (their ids start there)."""
        width = max(s.length for s in mb)
        ids = torch.full((len(row_cand), width), self.pad_id, dtype=torch.long, device=self.device)
        start = 0
        for s in mb:
            ids[start:start + len(s.cands), : s.length] = self.tasks[s.task].ids[s.example][offset:]
            start += len(s.cands)
        body = getattr(self.model, self.model.base_model_prefix)
        kwargs = {"past_key_values": cache, "use_cache": True} if cache is not None else {}
        hidden = body(input_ids=ids, **kwargs).last_hidden_state  # [B, W, H]
        sel, labels, cand = [], [], []
        start = 0
        for s in mb:
            enc, n = self.tasks[s.task], len(s.cands)
            pos, lab = enc.target_pos[s.example] - offset, enc.labels[s.example]
            sel.append(hidden[start:start + n, pos].flatten(0, 1))  # [n·T, H]
            labels.append(lab.repeat(n))
            cand.append(row_cand[start:start + n].repeat_interleave(len(lab)))
            start += n
        logits = self.model.get_output_embeddings()(torch.cat(sel)).float()  # [M, V]
        ce = F.cross_entropy(logits, torch.cat(labels), reduction="none")
        return ce, torch.cat(cand)

    def _seq2seq_ce(self, mb: list[Segment], row_cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder-decoder: encoder rows padded with a mask (attention is bidirectional there),
        decoder labels padded with -100."""
        b = len(row_cand)
        w_in = max(s.length for s in mb)
        w_out = max(len(self.tasks[s.task].labels[s.example]) for s in mb)
        ids = torch.full((b, w_in), self.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((b, w_in), dtype=torch.long, device=self.device)
        labels = torch.full((b, w_out), -100, dtype=torch.long, device=self.device)
        start = 0
        for s in mb:
            enc, n = self.tasks[s.task], len(s.cands)
            ids[start:start + n, : s.length] = enc.ids[s.example]
            mask[start:start + n, : s.length] = 1
            labels[start:start + n, : len(enc.labels[s.example])] = enc.labels[s.example]
            start += n
        dec_in = self.model._shift_right(labels.masked_fill(labels == -100, self.pad_id))
        logits = self.model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_in).logits.float()
        ce = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none", ignore_index=-100)
        return ce.sum(1), row_cand
