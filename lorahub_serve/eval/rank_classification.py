"""Rank classification: a multiple-choice answer read from option likelihoods, no generation.

For each example and method, the picked option is the one whose answer string (`ex.choices[i]`,
" (B)" or " yes") has the lowest mean cross-entropy per token given the method's prompt, under
the method's composition (weights over the chosen hub modules; all zero = the base model). The
answer string is scored alone, without the EOS the search appends.

Every (method, example) pair is one candidate of one `Evaluator.example_losses` call: a prompt's
options are one task whose examples are (prompt, option), so the packed row holds the prompt once
(the shared prefix) and each option attends to it; methods that see the same prompt share its
task, and the candidates differ in their weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lorahub_serve.data.examples import Example
from lorahub_serve.engine.evaluator import Evaluator


@dataclass(frozen=True)
class Method:
    """prompts: one per evaluation example; weights: [K] over the chosen modules (None = base)."""

    prompts: Sequence[str]
    weights: np.ndarray | None


def option_losses(evaluator: Evaluator, module_idx: Sequence[int], methods: Mapping[str, Method],
                  examples: Sequence[Example], tag: str = "rc") -> dict[str, list[np.ndarray | None]]:
    """Per method, per example: [n_options] mean CE of each option's answer string given the
    method's prompt (None for an example without options). `tag` prefixes the evaluator's
    temporary task keys, which are removed afterwards."""
    keys: dict[tuple[str, tuple[str, ...]], str] = {}  # (prompt, its answer strings) -> task key
    tasks, weights, slots = [], [], []  # slots: (method, example index) per candidate
    k = len(module_idx)
    for name, m in methods.items():
        if len(m.prompts) != len(examples):
            raise ValueError(f"method {name!r}: {len(m.prompts)} prompts for {len(examples)} examples")
        w = np.zeros(k, dtype=np.float32) if m.weights is None else np.asarray(m.weights, dtype=np.float32)
        for j, (prompt, ex) in enumerate(zip(m.prompts, examples)):
            if ex.choices:
                tasks.append(keys.setdefault((prompt, ex.choices), f"{tag}/{len(keys)}"))
                weights.append(w)
                slots.append((name, j))
    try:
        for (prompt, choices), key in keys.items():
            evaluator.add_task(key, [Example(prompt, c) for c in choices], eos=False, truncate=True)
        per_cand = (evaluator.example_losses(tasks, np.tile(module_idx, (len(tasks), 1)), np.stack(weights))
                    if tasks else [])
    finally:
        for key in keys.values():
            evaluator.remove_task(key)
    out: dict[str, list[np.ndarray | None]] = {name: [None] * len(examples) for name in methods}
    for (name, j), losses in zip(slots, per_cand):
        out[name][j] = np.asarray(losses, dtype=np.float64)
    return out


def picks(losses: Sequence[np.ndarray | None]) -> list[int | None]:
    """The option with the lowest loss per example (None without options)."""
    return [None if v is None else int(np.argmin(v)) for v in losses]


def rc_accuracy(losses: Sequence[np.ndarray | None], examples: Sequence[Example]) -> float | None:
    """Percent of the examples with options whose pick is the gold option; None when none has options."""
    scored = [(p, ex.gold_index) for p, ex in zip(picks(losses), examples) if p is not None]
    if not scored:
        return None
    return 100.0 * sum(p == g for p, g in scored) / len(scored)


def rank_classification(evaluator: Evaluator, module_idx: Sequence[int], methods: Mapping[str, Method],
                        examples: Sequence[Example], tag: str = "rc") -> dict[str, float | None]:
    """Rank-classification accuracy (percent) per method; None for a task without options."""
    losses = option_losses(evaluator, module_idx, methods, examples, tag)
    return {name: rc_accuracy(v, examples) for name, v in losses.items()}
