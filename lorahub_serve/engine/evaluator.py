"""Batched few-shot loss of many candidates: the function the search minimises.

`Evaluator.losses(tasks, module_idx, weights)` returns, per candidate c, the mean cross-entropy
of its task's output tokens given the inputs, with the base model adapted by candidate c's
composition. All candidates (of one or many tasks) run through shared forward passes: each
candidate repeats its task's rows (decoder-only: its examples packed into one row or a few), so
a task's rows for all candidates form groups of one length that need no padding, and groups
are packed into micro-batches under a token budget.

Everything per task lives on the model's device from `add_task` on (token ids, target
positions, labels), micro-batches are built by tensor indexing with no per-row Python, and the
losses accumulate on the device: one host sync per `losses` call.

How examples are laid out in rows (packed rows with a shared prefix, decoder-only) and rows in
micro-batches is `packing`'s job; this module runs the passes and takes the loss.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lorahub_serve.data.examples import Example, ExampleError
from lorahub_serve.engine.block_attention import (
    Blocks,
    attention_window,
    fits_window,
    supports_blocks,
    using_blocks,
)
from lorahub_serve.engine.hub import HubStack
from lorahub_serve.engine.multilora import attach
from lorahub_serve.engine.objective import OptionTerm, option_examples
from lorahub_serve.engine.packing import (
    MAX_ROW,
    PackedRow,
    Segment,
    default_token_budget,
    layout,
    pack_segments,
    shared_prefix,
)
from lorahub_serve.prompting import IGNORE, EncodedExample, encode_example, encode_seq2seq, pad_id

WARMUP_ROWS = (4, 24, 64)  # tokens: one row per Triton token-block size (16, 32, 64)


def warmup_examples(tokenizer, jit: bool) -> list[Example]:
    """The warm-up's examples: with Triton (jit) one whose row is at least each of WARMUP_ROWS
    tokens, so every BLOCK_T variant compiles at start-up; else one tiny example."""
    if not jit:
        return [Example("warm up", " ok")]
    out = []
    for n in WARMUP_ROWS:
        words = 1
        while len(tokenizer("warm " * words + "up", add_special_tokens=False)["input_ids"]) < n:
            words += 1
        out.append(Example("warm " * words + "up", " ok"))
    return out


@dataclass(frozen=True)
class EncodedTask:
    """One task's few-shot examples, encoded once, laid out in rows of device tensors (see
    `packing`; encoder-decoder: one row per example, ids = the encoder input, labels = the
    decoder labels)."""

    examples: tuple[EncodedExample, ...]
    rows: tuple[PackedRow, ...]
    prefix: int = 0  # tokens every example starts with, held once per row (0: none shared)

    @property
    def n_target(self) -> int:  # the denominator of the task's mean cross-entropy
        return sum(len(e.target_ids) for e in self.examples)

    @property
    def example_targets(self) -> np.ndarray:  # [E] output tokens scored per example
        return np.array([len(e.target_ids) for e in self.examples], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.examples)


class Evaluator:
    """Holds the base model with the hub attached; evaluates batches of candidates.

    stack: the hub's factors (all modules a candidate may name); rule: "lorahub" | "linear";
    backend: "auto" | "torch" | "triton"; token_budget: padded tokens per micro-batch (None:
    `packing.default_token_budget` for the model's device).
    """

    def __init__(self, model, tokenizer, stack: HubStack, rule: str = "lorahub", backend: str = "auto",
                 token_budget: int | None = None, max_length: int | None = None, truncate: bool = False,
                 share_prefix: bool = True, max_row: int = MAX_ROW, block_attention: bool = True):
        self.model, self.tokenizer, self.stack = model.eval(), tokenizer, stack
        self.rule = rule
        self.seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        self.max_length = max_length or getattr(model.config, "max_position_embeddings", None)
        self.truncate = truncate
        self.share_prefix = share_prefix and not self.seq2seq
        self.blocks = block_attention and supports_blocks(model)  # packed rows' attention per example
        self.window = attention_window(model.config)  # tokens a sliding-window layer sees (None: no window)
        self.softcap = getattr(model.config, "final_logit_softcapping", None)  # Gemma 2: 30
        self.max_row = max_row  # tokens per packed row (1: one example per row, no packing)
        self.handle = attach(model, stack, rule, backend)
        self.device = next(model.parameters()).device
        self.jit = backend == "triton" or (backend == "auto" and self.device.type == "cuda")  # Triton runs
        self.token_budget = token_budget or default_token_budget(self.device)
        self.pad_id = pad_id(tokenizer)
        self.tasks: dict[str, EncodedTask] = {}
        self.option_terms: dict[str, tuple[OptionTerm, float]] = {}  # task -> (its options, contrast)
        self.evaluations = 0
        self.seconds = 0.0
        self.warmup_seconds = 0.0

    def close(self) -> None:
        self.handle.detach()

    def add_task(self, key: str, examples: Sequence[Example], *, eos: bool = True,
                 truncate: bool | None = None, contrast: float = 0.0) -> None:
        """Encode `examples` under `key` (replacing any task of that name) into device tensors.

        eos: score the output's EOS token too (the search's objective) or the output alone (rank
        classification); truncate: drop a too-long prompt's oldest tokens instead of raising
        (default: the evaluator's setting); contrast: weight of the option term
        (`engine/objective.py`) that `losses` adds for this task (0: none; examples without
        options add nothing).
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
        task = self._to_device(encoded)
        self.remove_task(key)
        self.tasks[key] = task
        if contrast:
            flat, sizes, gold = option_examples(examples)
            if flat:
                term = OptionTerm(f"{key}\0options", tuple(sizes), tuple(gold))
                self.add_task(term.key, flat, eos=False, truncate=truncate)
                self.option_terms[key] = (term, float(contrast))

    def _to_device(self, encoded: list[EncodedExample]) -> EncodedTask:
        if self.seq2seq:
            def dev(values) -> torch.Tensor:
                return torch.tensor(values, dtype=torch.long).to(self.device, non_blocking=True)

            rows = tuple(PackedRow(dev(e.prompt_ids), dev(range(len(e.prompt_ids))), None,
                                   dev(range(len(e.target_ids))), dev(e.target_ids), dev([i]))
                         for i, e in enumerate(encoded))
            return EncodedTask(tuple(encoded), rows)
        prefix = shared_prefix(encoded) if self.share_prefix else 0
        return EncodedTask(tuple(encoded), layout(encoded, prefix, self.max_row, self.device), prefix)

    def remove_task(self, key: str) -> None:
        """Forget a task's encoded examples, and its option examples (a no-op for a key never added)."""
        self.tasks.pop(key, None)
        term = self.option_terms.pop(key, None)
        if term is not None:
            self.tasks.pop(term[0].key, None)

    def warmup(self) -> float:
        """Tiny batches through every adapted layer, so kernel JIT and allocator start-up are paid
        here, at engine start, and not by the first generation of the first search: with Triton
        one row per token-block size the kernels compile for (`WARMUP_ROWS`), on the torch path
        one. Returns seconds."""
        t0, counters = time.perf_counter(), (self.evaluations, self.seconds)
        key = "\0warmup"
        k = min(2, len(self.stack.modules))
        try:
            for ex in warmup_examples(self.tokenizer, self.jit):
                self.add_task(key, [ex], truncate=True)
                self.losses([key, key], np.tile(np.arange(k), (2, 1)), np.full((2, k), 0.5, dtype=np.float32))
        finally:
            self.remove_task(key)
            self.evaluations, self.seconds = counters  # not charged to any search
        self.warmup_seconds = time.perf_counter() - t0
        return self.warmup_seconds

    def _validate(self, tasks, module_idx: np.ndarray, weights: np.ndarray) -> None:
        grouped = weights.ndim == 3 and weights.shape[::2] == module_idx.shape  # [C, G, K]
        if not (weights.shape == module_idx.shape or grouped) or module_idx.ndim != 2 or len(tasks) != len(weights):
            raise ValueError(f"tasks {len(tasks)}, module_idx {module_idx.shape} and weights "
                             f"{weights.shape} must agree as [C], [C, K], [C, K] (or weights [C, G, K])")
        if not np.isfinite(weights).all():
            raise ValueError("candidate weights contain NaN or infinite values")
        unknown = sorted(set(tasks) - set(self.tasks))
        if unknown:
            raise KeyError(f"tasks {unknown} were not added to the evaluator (call add_task first)")

    def _groups(self, tasks: Sequence[str]) -> list[Segment]:
        """One group per (task, row): the candidates of that task (per task, not per row)."""
        keys = np.asarray(tasks, dtype=object)
        groups = []
        for task in dict.fromkeys(tasks):
            cands = np.flatnonzero(keys == task)
            groups += [Segment(task, r, cands, len(row)) for r, row in enumerate(self.tasks[task].rows)]
        return groups

    def losses(self, tasks: Sequence[str], module_idx: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Mean output-token cross-entropy per candidate.

        tasks [C] task keys; module_idx [C, K] int (indices into the stack); weights [C, K], or
        [C, G, K] per-layer-group weights (`layer_groups`: group g's layers compose with [:, g]).
        Returns [C] float64 losses (no L1 term: that belongs to the search objective); a task
        added with `contrast` gets its option term added, from the same passes.
        """
        c = len(tasks)
        extra = [i for i, t in enumerate(tasks) if t in self.option_terms]
        if extra:  # each such candidate also runs its task's option examples
            module_idx, weights = np.asarray(module_idx), np.asarray(weights)
            tasks = list(tasks) + [self.option_terms[tasks[i]][0].key for i in extra]
            module_idx = np.concatenate([module_idx, module_idx[extra]])
            weights = np.concatenate([weights, weights[extra]])
        sums = self._ce_sums(tasks, module_idx, weights)
        n_tok = np.array([self.tasks[t].n_target for t in tasks[:c]], dtype=np.float64)
        out = sums[:c].sum(1) / np.maximum(n_tok, 1)
        for j, i in enumerate(extra):
            term, contrast = self.option_terms[tasks[i]]
            out[i] += contrast * term.nll(self._example_means(sums[c + j], term.key))
        self.evaluations += c  # one evaluation per candidate, its options included
        return out

    def example_losses(self, tasks: Sequence[str], module_idx: np.ndarray, weights: np.ndarray) -> list[np.ndarray]:
        """Per candidate: [its task's examples] mean output-token cross-entropy of each example
        (the same passes as `losses`, which takes the option term from these)."""
        sums = self._ce_sums(tasks, module_idx, weights)
        self.evaluations += len(tasks)
        return [self._example_means(row, t) for row, t in zip(sums, tasks)]

    def _example_means(self, sums: np.ndarray, task: str) -> np.ndarray:
        """[E_task] mean CE per output token of each example, from one candidate's row of sums."""
        n = self.tasks[task].example_targets
        return sums[:len(n)] / np.maximum(n, 1)

    @torch.inference_mode()
    def _ce_sums(self, tasks: Sequence[str], module_idx: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """[C, E] summed cross-entropy of each candidate's examples (E: the most examples of any
        task; zeros beyond a task's own), with one host sync."""
        t0 = time.perf_counter()
        weights = np.asarray(weights, dtype=np.float32)
        module_idx = np.asarray(module_idx, dtype=np.int64)
        self._validate(tasks, module_idx, weights)
        width = max(len(self.tasks[t]) for t in dict.fromkeys(tasks)) if len(tasks) else 1
        ce_sum = torch.zeros(len(tasks) * width, dtype=torch.float32, device=self.device)
        with self.handle.route(module_idx, weights) as routing:
            for mb in pack_segments(self._groups(tasks), self.token_budget):
                row_cand = self._host_to_device(np.concatenate([s.cands for s in mb]))
                routing.row_cand = row_cand
                ce, cand, example = (self._seq2seq_ce(mb, row_cand) if self.seq2seq
                                     else self._causal_ce(mb, row_cand))
                ce_sum.index_add_(0, cand * width + example, ce)
        out = ce_sum.double().cpu().numpy().reshape(len(tasks), width)  # the one host sync
        self.seconds += time.perf_counter() - t0
        return out

    def _host_to_device(self, arr: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(arr)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def _causal_ce(self, mb: list[Segment], row_cand: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-token CE of the output tokens [M], each token's candidate [M] and example [M]; logits only at
        those positions. Rows are right-padded. A micro-batch of one-example rows runs without a
        mask (the causal mask hides the padding after a token, and the fast causal attention
        applies); packed rows bring their position ids and run attention block by block
        (`block_attention`), or, on a model that cannot, under a dense mask."""
        width = max(s.length for s in mb)
        b = len(row_cand)
        rows = [self.tasks[s.task].rows[s.row] for s in mb]
        ids = torch.full((b, width), self.pad_id, dtype=torch.long, device=self.device)
        packed = any(r.allowed is not None for r in rows)
        if packed:
            pos = torch.zeros((b, width), dtype=torch.long, device=self.device)
        start = 0
        for s, row in zip(mb, rows):
            n, length = len(s.cands), len(row)
            ids[start:start + n, :length] = row.ids
            if packed:
                pos[start:start + n, :length] = row.positions
            start += n
        body = getattr(self.model, self.model.base_model_prefix)
        if not packed:
            hidden = body(input_ids=ids).last_hidden_state  # [B, W, H]
        elif self.blocks and fits_window([r.block_members.shape[1] for r in rows], self.window):
            blocks = Blocks.of([(len(s.cands), r.block_members, r.block_of) for s, r in zip(mb, rows)],
                               width, self.device)
            with using_blocks(self.model):
                hidden = body(input_ids=ids, position_ids=pos, lorahub_blocks=blocks).last_hidden_state
        else:
            hidden = body(input_ids=ids, position_ids=pos,
                          attention_mask=self._dense_mask(mb, rows, width, pos)).last_hidden_state
        sel, labels, cand, example = [], [], [], []
        start = 0
        for s, row in zip(mb, rows):
            n = len(s.cands)
            sel.append(hidden[start:start + n, row.target_pos].flatten(0, 1))  # [n·T, H]
            labels.append(row.labels.repeat(n))
            example.append(row.target_example.repeat(n))
            cand.append(row_cand[start:start + n].repeat_interleave(len(row.labels)))
            start += n
        logits = self.model.get_output_embeddings()(torch.cat(sel)).float()  # [M, V]
        if self.softcap is not None:  # as the model's own forward does to its logits
            logits = torch.tanh(logits / self.softcap) * self.softcap
        ce = F.cross_entropy(logits, torch.cat(labels), reduction="none")
        return ce, torch.cat(cand), torch.cat(example)

    def _dense_mask(self, mb: list[Segment], rows: list[PackedRow], width: int, pos: torch.Tensor):
        """[B, 1, W, W] additive mask of packed rows, for models without block attention. With a
        sliding window (`self.window`), the sliding layers' mask also hides keys `window` or more
        positions back (by position id: an example continues from the prefix): a dict by layer
        type, as transformers' models with `layer_types` take it, or that mask alone for a model
        whose every layer slides."""
        b = sum(len(s.cands) for s in mb)
        # padding queries see only themselves, so no softmax row is empty
        allowed = torch.eye(width, dtype=torch.bool, device=self.device).repeat(b, 1, 1)
        start = 0
        for s, row in zip(mb, rows):
            n, length = len(s.cands), len(row)
            allowed[start:start + n, :length, :length] = (
                row.allowed if row.allowed is not None
                else torch.ones(length, length, dtype=torch.bool, device=self.device).tril())
            start += n
        dtype = next(self.model.parameters()).dtype

        def additive(ok: torch.Tensor) -> torch.Tensor:
            mask = torch.zeros(ok.shape, dtype=dtype, device=self.device)
            return mask.masked_fill_(~ok, torch.finfo(dtype).min)[:, None]

        if self.window is None:
            return additive(allowed)
        windowed = additive(allowed & (pos[:, :, None] - pos[:, None, :] < self.window))
        types = getattr(self.model.config, "layer_types", None)
        if types is None:
            return windowed
        return {t: windowed if t == "sliding_attention" else additive(allowed) for t in set(types)}

    def _seq2seq_ce(self, mb: list[Segment], row_cand: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Encoder-decoder: encoder rows padded with a mask (attention is bidirectional there),
        decoder labels padded with IGNORE."""
        b = len(row_cand)
        rows = [self.tasks[s.task].rows[s.row] for s in mb]
        w_in, w_out = max(len(r) for r in rows), max(len(r.labels) for r in rows)
        ids = torch.full((b, w_in), self.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((b, w_in), dtype=torch.long, device=self.device)
        labels = torch.full((b, w_out), IGNORE, dtype=torch.long, device=self.device)
        start = 0
        for s, row in zip(mb, rows):
            n = len(s.cands)
            ids[start:start + n, :len(row)] = row.ids
            mask[start:start + n, :len(row)] = 1
            labels[start:start + n, :len(row.labels)] = row.labels
            start += n
        dec_in = self.model._shift_right(labels.masked_fill(labels == IGNORE, self.pad_id))
        logits = self.model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_in).logits.float()
        ce = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none", ignore_index=IGNORE)
        example = torch.cat([row.target_example.expand(len(s.cands)) for s, row in zip(mb, rows)])
        return ce.sum(1), row_cand, example
