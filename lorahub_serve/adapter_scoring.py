"""Accuracy of one plain model (the base, or a PEFT-wrapped one) on examples, without the engine.

Hub training (a module's held-out accuracy), the headroom suite's oracle gate and the
few-shot fine-tuning baseline score single adapters this way; the engine scores compositions.
Both read an answer the same way:
- multiple choice: rank classification, the option whose answer string has the lowest mean
  cross-entropy per token given the prompt (scored alone, without EOS, as `rank_classification`);
- generative: greedy exact match of the first line (`scoring.score`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch

from lorahub_serve.data.examples import Example
from lorahub_serve.prompting import IGNORE, encode_example, pad_id, pad_rows, prompt_ids
from lorahub_serve.scoring import STOP
from lorahub_serve.scoring import accuracy as em_accuracy
from lorahub_serve.target_logits import row_token_losses


def autocast(dtype: str):
    """bf16 autocast on CPU (cache off: cached casts of trained weights would go stale), or none."""
    if dtype == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


@torch.no_grad()
def option_losses(model, tok, examples: Sequence[Example], batch_size: int = 16,
                  max_length: int | None = 512, dtype: str = "float32") -> list[np.ndarray]:
    """Per example: [n_options] mean CE of each option's answer string given the prompt."""
    seqs, owner = [], []
    for i, ex in enumerate(examples):
        for c in ex.choices:
            enc = encode_example(tok, Example(ex.input, c), max_length, truncate=True, eos=False)
            seqs.append((enc.prompt_ids, enc.target_ids))
            owner.append(i)
    order = sorted(range(len(seqs)), key=lambda j: len(seqs[j][0]) + len(seqs[j][1]))
    mean_ce = np.zeros(len(seqs))
    pad = pad_id(tok)
    for s in range(0, len(order), batch_size):
        chunk = order[s:s + batch_size]
        rows = [list(seqs[j][0]) + list(seqs[j][1]) for j in chunk]
        labels = pad_rows([[IGNORE] * len(seqs[j][0]) + list(seqs[j][1]) for j in chunk], IGNORE)
        ids = pad_rows(rows, pad)
        mask = pad_rows([[1] * len(r) for r in rows], 0)
        with autocast(dtype):
            ce, n = row_token_losses(model, ids, mask, labels)
        mean_ce[chunk] = (ce / n.clamp(min=1)).numpy()
    out: list[list[float]] = [[] for _ in examples]
    for j, i in enumerate(owner):
        out[i].append(mean_ce[j])
    return [np.asarray(v) for v in out]


def rc_accuracy(model, tok, examples: Sequence[Example], **kw) -> float:
    """Percent of examples whose lowest-loss option is the gold one."""
    losses = option_losses(model, tok, examples, **kw)
    hits = [int(np.argmin(v)) == ex.gold_index for v, ex in zip(losses, examples)]
    return 100.0 * sum(hits) / max(len(hits), 1)


@torch.no_grad()
def greedy_answers(model, tok, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 16,
                   dtype: str = "float32") -> list[str]:
    """Greedy continuations, cut at the first blank line."""
    pad = pad_id(tok)
    out = []
    for s in range(0, len(prompts), batch_size):
        rows = [prompt_ids(tok, p) for p in prompts[s:s + batch_size]]
        ids = pad_rows(rows, pad, left=True)
        mask = pad_rows([[1] * len(r) for r in rows], 0, left=True)
        with autocast(dtype):
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad)
        for row in gen[:, ids.shape[1]:]:
            out.append(tok.decode(row, skip_special_tokens=True).split(STOP, 1)[0])
    return out


def accuracy(model, tok, examples: Sequence[Example], dtype: str = "float32") -> tuple[str, float]:
    """("rc", %) for multiple-choice examples, ("em", %) for generative ones."""
    if not examples:
        raise ValueError("accuracy of no examples: pass at least one")
    if all(ex.choices and ex.gold_index is not None for ex in examples):
        return "rc", rc_accuracy(model, tok, examples, dtype=dtype)
    return "em", em_accuracy(generated_answers(model, tok, examples, dtype), examples)


def generated_answers(model, tok, examples: Sequence[Example], dtype: str = "float32") -> list[str]:
    """Greedy answers to the examples' inputs, up to the longest gold output + 2 tokens."""
    new = max(len(tok(ex.output, add_special_tokens=False)["input_ids"]) for ex in examples) + 2
    return greedy_answers(model, tok, [ex.input for ex in examples], new, dtype=dtype)


def majority_rate(examples: Sequence[Example]) -> float:
    """Percent of examples whose gold answer is the most common one (the label prior's score)."""
    from collections import Counter

    counts = Counter(ex.output.strip() for ex in examples)
    return 100.0 * counts.most_common(1)[0][1] / max(len(examples), 1)
