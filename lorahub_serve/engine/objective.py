"""The option term of the few-shot objective: how well a candidate tells the gold option from the others.

The search's plain objective is the mean cross-entropy of each example's gold output (+ L1). On a
task with a fixed label set (Yes/No, True/False) a composition can lower it by giving every
question the majority label; measured on BBH, LoraHub's greedy answers then collapse to one label
(navigate: 44 % = the share of "False"). The option term scores the other options as well: per
example with options, the negative log-probability of the gold option under a softmax over the
options' mean per-token log-likelihoods (rank classification's scores). A constant answer gains
nothing there. Objective = loss + contrast · mean option NLL + l1 · mean|w|.

`Evaluator.add_task(key, examples, contrast=λ)` registers the option examples beside the task,
and `Evaluator.losses` then returns loss + λ · option NLL for that task's candidates, computed in
the same passes as the loss: `adapt`, `adapt-batch` and the cluster all search the same objective.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lorahub_serve.data.examples import Example


@dataclass(frozen=True)
class OptionTerm:
    """The (prompt, option) examples of a task, flattened in the evaluator under `key`;
    `sizes[i]` options for example i, `gold[i]` the gold one's position among them."""

    key: str
    sizes: tuple[int, ...]
    gold: tuple[int, ...]

    def nll(self, option_losses: np.ndarray) -> float:
        """Mean over examples of −log softmax(−option losses)[gold]; `option_losses` [Σ sizes]."""
        out, start = [], 0
        for n, g in zip(self.sizes, self.gold):
            logits = -np.asarray(option_losses[start:start + n], dtype=np.float64)
            top = logits.max()
            out.append(top + np.log(np.exp(logits - top).sum()) - logits[g])
            start += n
        return float(np.mean(out))


def option_examples(examples: Sequence[Example]) -> tuple[list[Example], list[int], list[int]]:
    """One (prompt, answer string) example per option of every example with ≥ 2 options and a
    gold option among them; with their counts and gold positions."""
    flat, sizes, gold = [], [], []
    for ex in examples:
        if len(ex.choices) >= 2 and ex.gold_index is not None:
            flat += [Example(ex.input, c) for c in ex.choices]
            sizes.append(len(ex.choices))
            gold.append(ex.gold_index)
    return flat, sizes, gold
