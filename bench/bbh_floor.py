"""bbh_floor: can this base model learn the BBH tasks at all (issue 19)? The oracle rows of the BBH table.

For each BBH task: an *oracle* LoRA trained with gradients on the task's own examples outside its
fixed evaluation set (`eval.suite.split_for_oracle`: the first min(250, half) of the seed-0 shuffle,
the set `eval --suite bbh --limit 250` scores), kept apart from the hub in its own folder. The
base model and the oracle are scored on that evaluation set (rank classification for multiple
choice, exact match for generative tasks), beside chance and the majority-label rate, with 95 %
Wilson intervals. A task where the oracle does not beat max(base, majority) shows that no method
that starts from this base model (LoraHub included) has anything to find there.

    .venv/bin/python bench/bbh_floor.py [--tasks navigate snarks ...] [--steps 100] [--n-eval 250]

Resumable: an oracle already trained in `--oracles` is reused.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lorahub_serve.eval.headroom_report import binomial_ci
from lorahub_serve.eval.run import BBH_TABLE_TASKS as TABLE_TASKS


def _cell(acc: float, n: int) -> str:
    lo, hi = binomial_ci(round(acc * n / 100), n)
    return f"{acc:.1f} [{lo:.0f}, {hi:.0f}]"


def score_task(net, tok, task: str, cfg, oracle_dir: Path, n_eval: int) -> dict:
    from peft import PeftModel

    from lorahub_serve.adapter_scoring import accuracy, majority_rate
    from lorahub_serve.data import tasks
    from lorahub_serve.eval.suite import split_for_oracle
    from lorahub_serve.formats import read_hub_json
    from lorahub_serve.hub.build import module_name, record_module, train_module

    train, evalset = split_for_oracle(task, cap=n_eval)
    folder = oracle_dir / "modules" / module_name(task)
    t0 = time.time()
    if not (folder / "adapter_model.safetensors").exists():
        mod = train_module(net, tok, task, cfg, examples=train)
        if mod.skipped:
            raise SystemExit(f"{task}: no oracle ({mod.skipped})")
        record_module(oracle_dir, read_hub_json(oracle_dir, missing_ok=True) | {"base_model": "smollm2-135m"},
                      mod, cfg)
    seconds = time.time() - t0
    metric, base = accuracy(net, tok, evalset, dtype=cfg.dtype)
    peft_model = PeftModel.from_pretrained(net, folder).eval()
    _, oracle = accuracy(peft_model, tok, evalset, dtype=cfg.dtype)
    peft_model.unload()
    majority = majority_rate(evalset)
    chance = 100.0 * tasks.task_info(task).chance
    return {"task": task, "metric": metric, "n_eval": len(evalset), "n_train": len(train),
            "chance": round(chance, 1), "majority": round(majority, 1), "base": round(base, 1),
            "oracle": round(oracle, 1), "gain": round(oracle - max(base, majority), 1),
            "oracle_seconds": round(seconds, 1)}


def markdown(rows: list[dict], cfg, oracle_dir: Path) -> str:
    recipe = (f"Oracles: a rank-{cfg.rank} q,v LoRA per task, {cfg.steps} steps of {cfg.batch_size}, "
              f"lr {cfg.lr}, max_length {cfg.max_length}, {cfg.dtype} autocast, trained on the task's "
              f"examples outside its evaluation set; kept in `{oracle_dir}`, apart from the hub.")
    header = ("| task | metric | eval n | train n | chance | majority | base [95 % CI] | oracle [95 % CI] "
              "| oracle - max(base, majority) |")
    lines = [recipe, "", header, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['metric']} | {r['n_eval']} | {r['n_train']} | {r['chance']:.1f} | "
                     f"{r['majority']:.1f} | {_cell(r['base'], r['n_eval'])} | {_cell(r['oracle'], r['n_eval'])} "
                     f"| {r['gain']:+.1f} |")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("chance", "majority", "base", "oracle", "gain")}
    lines.append(f"| **average** | | | | {mean['chance']:.1f} | {mean['majority']:.1f} | {mean['base']:.1f} | "
                 f"{mean['oracle']:.1f} | {mean['gain']:+.1f} |")
    learnable = [r["task"] for r in rows if r["gain"] >= 20]
    verdict = (f"Tasks where the oracle beats max(base, majority) by >= 20 points (the headroom suite's "
               f"gate): {', '.join(learnable) or 'none'}. Elsewhere gradient training on the task's own "
               f"examples does not lift this model off its floor, so a BBH difference between methods "
               f"there is noise.")
    lines += ["", verdict]
    return "\n".join(lines)


def main() -> None:
    from _meta import write_result

    from lorahub_serve.hub.train import TrainConfig
    from lorahub_serve.models import load_base, resolve_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", nargs="*", default=list(TABLE_TASKS))
    ap.add_argument("--oracles", default="hubs/smollm2-135m-bbh-oracles",
                    help="folder for the BBH oracles (never a hub: BBH is held out)")
    ap.add_argument("--n-eval", type=int, default=250, help="evaluation examples per task (at most half the task)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--name", default="bbh_floor")
    a = ap.parse_args()
    cfg = TrainConfig(steps=a.steps, lr=a.lr, max_length=a.max_length, dtype=a.dtype)
    net, tok = load_base(resolve_model(a.model))
    oracle_dir = Path(a.oracles)
    rows = []
    from tqdm import tqdm

    for task in tqdm(a.tasks, desc="bbh floor", unit="task"):
        rows.append(score_task(net, tok, task, cfg, oracle_dir, a.n_eval))
        print(rows[-1], flush=True)
    figures = {"rows": rows, "recipe": {"steps": cfg.steps, "lr": cfg.lr, "batch_size": cfg.batch_size,
                                        "rank": cfg.rank, "max_length": cfg.max_length, "dtype": cfg.dtype},
               "oracles": str(oracle_dir)}
    print(write_result(a.name, figures, markdown(rows, cfg, oracle_dir)))


if __name__ == "__main__":
    main()
