"""train_step_speed: one hub-training step with the model's full-vocabulary loss against
`target_logits` (the LM head only at answer tokens), on the same batches, in one process.

A step is forward + backward + AdamW on a rank-8 q,v LoRA, batch 8, examples of a BIG-bench task
that fit `--max-length` (the hub's recipe). The two losses alternate `--repeats` times so that
machine noise hits both; the ratio of medians is the figure.

    .venv/bin/python bench/train_step_speed.py [--model gemma3-270m] [--task tense] [--steps 4] \
        [--repeats 3] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import torch
    from _meta import write_result
    from peft import LoraConfig, get_peft_model

    from lorahub_serve.adapter_scoring import autocast
    from lorahub_serve.data import tasks
    from lorahub_serve.hub.train import TrainConfig, heldout_split
    from lorahub_serve.models import load_base, resolve_model
    from lorahub_serve.prompting import causal_batch, pad_id
    from lorahub_serve.target_logits import target_loss

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--task", default="rg/gcd@le20")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per repeat and loss")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    a = ap.parse_args()

    net, tok = load_base(resolve_model(a.model))
    cfg = TrainConfig(max_length=a.max_length, dtype=a.dtype)
    rows, _, _ = heldout_split(tok, tasks.load_task(a.task), cfg)
    batches = [causal_batch(rows[i * 8:(i + 1) * 8], pad_id(tok)) for i in range(a.steps)]
    model = get_peft_model(net, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    losses = {"full_vocab": lambda ids, m, lab: model(input_ids=ids, attention_mask=m, labels=lab).loss,
              "target_logits": lambda ids, m, lab: target_loss(model, ids, m, lab)}

    def run(loss_of) -> float:
        t0 = time.perf_counter()
        for ids, m, lab in batches:
            with autocast(a.dtype):
                loss = loss_of(ids, m, lab)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return (time.perf_counter() - t0) / len(batches)

    for loss_of in losses.values():  # warm-up: allocator, oneDNN kernels
        run(loss_of)
    times: dict[str, list[float]] = {k: [] for k in losses}
    for _ in range(a.repeats):
        for k, loss_of in losses.items():
            times[k].append(run(loss_of))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["full_vocab"] / med["target_logits"]
    figures = {"model": a.model, "task": a.task, "dtype": a.dtype, "vocab": net.config.vocab_size,
               "tokens_per_batch": [int(m.sum()) for _, m, _ in batches],
               "seconds_per_step": times, "median_seconds_per_step": med, "speedup": ratio}
    md = (f"{a.model} (vocab {net.config.vocab_size}), {a.task}, batch 8, {a.dtype} autocast, rank-8 q,v LoRA\n\n"
          "| loss | s / step (median of {0}) | range |\n|---|---|---|\n".format(a.repeats)
          + "".join(f"| {k} | {med[k]:.2f} | {min(v):.2f}–{max(v):.2f} |\n" for k, v in times.items())
          + f"\ntarget_logits is **{ratio:.2f}x** faster per training step.\n")
    paths = write_result("train_step_speed", figures, md)
    print(md)
    print("written:", *paths)


if __name__ == "__main__":
    main()
