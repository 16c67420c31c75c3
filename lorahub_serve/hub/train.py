"""Train one PEFT LoRA module on a task's examples (the hub's building block)."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lorahub_serve.adapter_scoring import accuracy, autocast
from lorahub_serve.atomic import atomic_dir
from lorahub_serve.data.examples import Example
from lorahub_serve.prompting import causal_batch, encode_example, pad_id
from lorahub_serve.target_logits import row_token_losses, target_loss


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    steps: int = 60
    batch_size: int = 8
    lr: float = 1e-3
    max_length: int = 256
    seed: int = 0
    heldout: int = 32  # examples kept out of training to measure the module's held-out loss
    dtype: str = "float32"  # "bfloat16": bf16 autocast (~1.5x faster on CPUs with AVX512-BF16;
    # held-out losses within a few % of fp32, measured on fact_checker/fever); weights stay fp32
    generic_share: float = 0.0  # format-robust training: this share of the training examples is
    # shown in the generic `Q: …\nA:` frame instead of the task's own (the held-out split stays
    # in the task's own format, so held-out figures compare with a module trained without it)

    def __post_init__(self):
        for name in ("rank", "alpha", "steps", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"TrainConfig.dtype must be float32 or bfloat16, got {self.dtype!r}")
        if not 0.0 <= self.generic_share <= 1.0:
            raise ValueError(f"TrainConfig.generic_share must be in [0, 1], got {self.generic_share}")


def encode_rows(tokenizer, examples: list[Example], max_length: int, keep: list | None = None) -> list[tuple]:
    """(prompt_ids, target_ids) of every example that fits `max_length`, in order (the examples
    kept are appended to `keep` when given)."""
    rows = []
    for ex in examples:
        try:
            enc = encode_example(tokenizer, ex, max_length, truncate=False)
        except ValueError:
            continue
        rows.append((enc.prompt_ids, enc.target_ids))
        if keep is not None:
            keep.append(ex)
    return rows


def heldout_split(tokenizer, examples: list[Example], cfg: TrainConfig) -> tuple[list, list, list[Example]]:
    """(training rows, held-out rows, held-out examples): of the examples that fit
    `cfg.max_length`, min(`cfg.heldout`, a fifth) are held out, picked by a permutation seeded with
    `cfg.seed` alone, so the split can be rebuilt from the task and the config (`hub heldout`)."""
    rows, heldout, held_examples, _ = _split(tokenizer, examples, cfg)
    return rows, heldout, held_examples


def _split(tokenizer, examples: list[Example], cfg: TrainConfig):
    """`heldout_split`, plus the index in `examples` of each training row."""
    kept: list[Example] = []
    rows = encode_rows(tokenizer, examples, cfg.max_length, keep=kept)
    where = {id(ex): i for i, ex in enumerate(examples)}
    n_held = min(cfg.heldout, len(rows) // 5)
    perm = list(range(len(rows)))
    random.Random(f"heldout:{cfg.seed}").shuffle(perm)
    return ([rows[i] for i in perm[n_held:]], [rows[i] for i in perm[:n_held]],
            [kept[i] for i in perm[:n_held]], [where[id(kept[i])] for i in perm[n_held:]])


def format_mixed_rows(tokenizer, rows: list[tuple], sources: list[int], generic: list[Example],
                      cfg: TrainConfig) -> tuple[list[tuple], int]:
    """Format-robust training rows: each training row is swapped, with probability
    `cfg.generic_share` (a coin seeded by `cfg.seed` and the example), for its example in the
    generic frame (`generic[source]`; kept as it is when that one does not fit). Returns the rows
    and how many were swapped."""
    out, swapped = [], 0
    for row, src in zip(rows, sources):
        if random.Random(f"format:{cfg.seed}:{src}").random() < cfg.generic_share:
            alt = encode_rows(tokenizer, [generic[src]], cfg.max_length)
            if alt:
                out.append(alt[0])
                swapped += 1
                continue
        out.append(row)
    return out, swapped


def train_lora(model, tokenizer, examples: list[Example], out_dir: Path, cfg: TrainConfig,
               progress=None, generic: list[Example] | None = None) -> dict:
    """Fit a LoRA on `examples` and save it as a PEFT folder (atomically). Returns stats.

    `model` is the base model; it is wrapped by PEFT for the duration and unwrapped after.
    `generic`: the same examples in the generic frame, index for index (needed when
    `cfg.generic_share` > 0).
    """
    from peft import LoraConfig, get_peft_model

    rows, heldout, held_examples, sources = _split(tokenizer, examples, cfg)
    swapped = 0
    if cfg.generic_share > 0:
        if generic is None or len(generic) != len(examples):
            raise ValueError("format-robust training (generic_share > 0) needs the examples in the "
                             "generic frame, one for each example")
        rows, swapped = format_mixed_rows(tokenizer, rows, sources, generic, cfg)
    if len(rows) < cfg.batch_size:
        raise ValueError(f"only {len(rows)} usable examples (need >= {cfg.batch_size})")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    lcfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=list(cfg.target_modules),
                      lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lcfg)
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 5) * 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    pad = pad_id(tokenizer)
    order: list[int] = []
    losses = []
    t0 = time.time()
    for step in range(cfg.steps):
        if len(order) < cfg.batch_size:
            order = list(range(len(rows)))
            rng.shuffle(order)
        idx, order = order[: cfg.batch_size], order[cfg.batch_size:]
        ids, mask, labels = causal_batch([rows[i] for i in idx], pad)
        with autocast(cfg.dtype):
            loss = target_loss(peft_model, ids, mask, labels)  # head only at answer tokens
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if progress is not None:
            progress(step + 1, cfg.steps, loss.item())
    peft_model.eval()
    held_loss = mean_loss(peft_model, heldout, pad, cfg.batch_size) if heldout else None
    held_metric, held_acc = (accuracy(peft_model, tokenizer, held_examples, dtype=cfg.dtype)
                             if held_examples else (None, None))
    with atomic_dir(Path(out_dir)) as tmp:
        peft_model.save_pretrained(tmp, safe_serialization=True)
    peft_model.unload()  # restore the plain base model for the next module
    tail = losses[-10:]
    return {"final_loss": sum(tail) / len(tail), "first_loss": losses[0], "steps": cfg.steps,
            "examples": len(rows), "heldout_loss": held_loss, "heldout_examples": len(heldout),
            "heldout_accuracy": held_acc, "heldout_metric": held_metric, "generic_rows": swapped,
            "seconds": round(time.time() - t0, 1)}


@torch.no_grad()
def mean_loss(model, rows, pad: int, batch_size: int) -> float:
    """Mean output-token cross-entropy over (prompt_ids, target_ids) rows."""
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        ids, mask, labels = causal_batch(rows[i:i + batch_size], pad)
        ce, n = row_token_losses(model, ids, mask, labels)
        total, count = total + ce.sum().item(), count + int(n.sum())
    return total / max(count, 1)
