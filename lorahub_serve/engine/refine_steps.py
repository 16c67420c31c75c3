"""The gradient steps of `adapt --refine` (the method: `refine.py`'s docstring)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lorahub_serve.data.examples import Example
from lorahub_serve.engine.export import compose_factors
from lorahub_serve.engine.merge import MergeSpec
from lorahub_serve.engine.refine import RefineConfig
from lorahub_serve.prompting import (
    IGNORE,
    causal_batch,
    encode_example,
    encode_seq2seq,
    pad_id,
    pad_rows,
)

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer -> (A [r, d_in], B [d_out, r])


@dataclass
class Refined:
    """What refinement produced: the new weights (form "weights") or factors (form "factors"),
    and lorahub.json's record of it."""

    weights: np.ndarray | None
    factors: Factors | None
    record: dict


class _Batch:
    """The examples as one padded batch on the model's device, and per-row token counts."""

    def __init__(self, model, tokenizer, examples: Sequence[Example]):
        self.seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        device = next(model.parameters()).device
        pad = pad_id(tokenizer)
        if self.seq2seq:
            enc = [encode_seq2seq(tokenizer, e) for e in examples]
            ids = pad_rows([e.prompt_ids for e in enc], pad)
            mask = pad_rows([[1] * len(e.prompt_ids) for e in enc], 0)
            labels = pad_rows([e.target_ids for e in enc], IGNORE)
        else:
            enc = [encode_example(tokenizer, e) for e in examples]
            ids, mask, labels = causal_batch([(e.prompt_ids, e.target_ids) for e in enc], pad)
        self.ids, self.mask, self.labels = ids.to(device), mask.to(device), labels.to(device)
        self.tokens = torch.tensor([len(e.target_ids) for e in enc], dtype=torch.float32, device=device)

    def row_ce(self, model) -> torch.Tensor:
        """[E] summed output-token cross-entropy of each example."""
        if self.seq2seq:
            logits = model(input_ids=self.ids, attention_mask=self.mask, labels=self.labels).logits
            gold = self.labels
        else:  # logits only where a label is (as the evaluator takes them)
            from lorahub_serve.target_logits import target_logits

            logits, gold, row = target_logits(model, self.ids, self.mask, self.labels)
            ce = F.cross_entropy(logits, gold, reduction="none")
            return torch.zeros(len(self.tokens), dtype=ce.dtype, device=ce.device).index_add_(0, row, ce)
        ce = F.cross_entropy(logits.float().transpose(1, 2), gold, reduction="none", ignore_index=IGNORE)
        return ce.sum(1)


@contextmanager
def _lora_hooks(model, layers: Sequence[str], current: dict):
    """While open, each of `layers` adds x·Aᵀ·Bᵀ with (A, B) = current[layer] to its output, and
    the model's own parameters take no gradient."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)

    def hook(name):
        def add(_module, inputs, out):
            a, b = current[name]
            x = inputs[0]
            return out + (x @ a.to(x.device, x.dtype).T) @ b.to(x.device, x.dtype).T
        return add

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)


def _descend(params: list[torch.Tensor], objective: Callable[[torch.Tensor], torch.Tensor],
             row_ce: Callable[[], torch.Tensor], tokens: torch.Tensor, train: torch.Tensor, steps: int,
             lr: float, held_out: int | None = None) -> list[float]:
    """`steps` Adam steps on objective(mean output-token CE of the `train` rows [E] bool); returns
    example `held_out`'s mean CE after each of 0..steps steps (empty without one)."""
    opt = torch.optim.Adam(params, lr=lr)
    curve = []
    for step in range(steps + 1):
        ce = row_ce()  # [E] summed CE per example, with the parameters after `step` steps
        if held_out is not None:
            curve.append(float(ce[held_out].detach() / tokens[held_out]))
        if step == steps:
            break
        opt.zero_grad()
        objective(ce[train].sum() / tokens[train].sum()).backward()
        opt.step()
    return curve


def refine(model, tokenizer, stack, module_idx: Sequence[int], weights: np.ndarray,
           examples: Sequence[Example], cfg: RefineConfig, search_rule: str, export: MergeSpec,
           l1: float, allow_pickle: bool = False) -> Refined:
    """Refine the composition `weights` ([K] or [G, K]) of hub modules `module_idx` on `examples`
    (see the module docstring). search_rule: the rule the search composed with (form weights);
    export: the exported adapter's rule (form factors refines its factors)."""
    t0 = time.perf_counter()
    if cfg.guard == "loo" and len(examples) < 2:
        raise ValueError("--refine with the leave-one-out guard needs at least 2 examples (one held "
                         "out per fold); pass more examples or --refine-guard none")
    batch = _Batch(model, tokenizer, examples)
    idx = [int(i) for i in module_idx]
    w0 = torch.as_tensor(np.asarray(weights), dtype=torch.float32)
    if cfg.on == "weights":
        start = [w0]

        def factors_of(params):
            return compose_factors(stack, idx, params[0], search_rule)

        def objective(params):
            return lambda loss: loss + l1 * params[0].abs().mean()
        rule = search_rule
    else:
        composed = compose_factors(stack, idx, w0.numpy(), export, model=model, allow_pickle=allow_pickle)
        names = sorted(composed)
        start = [t for n in names for t in composed[n]]

        def factors_of(params):
            return {n: (params[2 * i], params[2 * i + 1]) for i, n in enumerate(names)}

        def objective(_params):
            return lambda loss: loss
        rule = export.rule
    layers = list(factors_of(start))
    device = batch.ids.device
    current: dict = {}

    def fresh():
        return [t.detach().clone().float().to(device).requires_grad_(True) for t in start]

    def runner(params):
        def row_ce():
            current.update(factors_of(params))
            return batch.row_ce(model)
        return row_ce

    e = len(examples)
    everyone = torch.ones(e, dtype=torch.bool, device=device)
    lr = cfg.learning_rate
    with _lora_hooks(model, layers, current), torch.enable_grad():
        before = _mean_loss(runner(fresh())(), batch.tokens)
        curves = []
        if cfg.guard == "loo" and cfg.steps:
            for i in range(e):
                params = fresh()
                train = everyone.clone()
                train[i] = False
                curves.append(_descend(params, objective(params), runner(params), batch.tokens, train,
                                       cfg.steps, lr, held_out=i))
            loo = np.mean(curves, axis=0)
            kept = int(np.argmin(loo))  # the first minimum: fewer steps on a tie
        else:
            loo, kept = None, cfg.steps
        params = fresh()
        _descend(params, objective(params), runner(params), batch.tokens, everyone, kept, lr)
        with torch.no_grad():
            after = _mean_loss(runner(params)(), batch.tokens)
    record = {"on": cfg.on, "rule": rule, "steps_asked": cfg.steps, "steps_kept": kept, "lr": lr,
              "optimizer": "adam", "guard": cfg.guard, "objective": (
                  "loss + l1*mean|w|" if cfg.on == "weights" else "loss"),
              "loo_curve": None if loo is None else [round(float(v), 6) for v in loo],
              "loss_before": before, "loss_after": after,
              "exact_composition": cfg.on == "weights", "seconds": round(time.perf_counter() - t0, 3)}
    if cfg.on == "weights":
        return Refined(params[0].detach().cpu().numpy().astype(np.float64), None, record)
    return Refined(None, {n: (a.detach().cpu(), b.detach().cpu()) for n, (a, b) in factors_of(params).items()},
                   record)


def _mean_loss(row_ce: torch.Tensor, tokens: torch.Tensor) -> float:
    """Mean output-token cross-entropy over all examples (the search's loss)."""
    return float(row_ce.detach().sum() / tokens.sum())
