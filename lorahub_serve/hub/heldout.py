"""`lorahub-serve hub heldout`: measure the held-out loss and accuracy of hub modules that were
recorded without them (hubs built before accuracy was measured at training time).

The held-out split is rebuilt from the module's task and its recorded `max_length` (the split is a
permutation seeded by `TrainConfig.seed` alone, `train.heldout_split`). The module's recorded
training-example count must equal the rebuilt split's (hubs built before the split existed trained
on every example, held-out rows included: those need retraining), and the recomputed loss must
match the one recorded at training time (the module was stored in float16 afterwards, so within
`LOSS_RTOL`), which shows the split is the one the module never trained on; only then is the
accuracy written, with `"heldout_backfilled": true`. Run it while no `hub build` writes the hub.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lorahub_serve.formats import read_hub_json, write_hub_json

LOSS_RTOL = 0.02  # fp32 weights at training time vs their float16 copy, and batch-order noise


@dataclass
class BackfillReport:
    measured: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # recomputed loss far from the recorded one
    skipped: list[str] = field(default_factory=list)  # no task to rebuild the split from


def measure_heldout(net, tok, module_dir: Path, split, cfg, dtype: str = "float32") -> dict:
    """Held-out loss, example count, accuracy and metric of the PEFT module in `module_dir`
    trained with `cfg`, on `split` (`train.heldout_split` of its examples); `net` is the base
    model, restored afterwards."""
    from peft import PeftModel

    from lorahub_serve.adapter_scoring import accuracy
    from lorahub_serve.hub.train import mean_loss
    from lorahub_serve.prompting import pad_id

    train, rows, held = split
    if not rows:
        raise ValueError(f"{module_dir.name}: no held-out examples fit max_length {cfg.max_length}")
    model = PeftModel.from_pretrained(net, str(module_dir)).eval()
    try:
        loss = mean_loss(model, rows, pad_id(tok), cfg.batch_size)
        metric, acc = accuracy(model, tok, held, dtype=dtype)
    finally:
        model.unload()
    return {"heldout_loss": loss, "heldout_examples": len(rows), "heldout_accuracy": acc,
            "heldout_metric": metric, "train_examples": len(train)}


def backfill_heldout(model: str, hub_dir: Path, log=print, progress: bool = True) -> BackfillReport:
    """Measure every module of `hub_dir` that lacks `heldout_accuracy`; hub.json is rewritten
    after each one, so a stopped run resumes where it was."""
    from tqdm.auto import tqdm

    from lorahub_serve.data import tasks
    from lorahub_serve.hub.train import TrainConfig, heldout_split
    from lorahub_serve.models import load_base, resolve_model

    hub_dir = Path(hub_dir)
    manifest = read_hub_json(hub_dir)
    if manifest is None:
        raise FileNotFoundError(f"{hub_dir}/hub.json not found: is {hub_dir} a hub folder?")
    todo = [m for m in manifest["modules"] if m.get("heldout_accuracy") is None]
    report = BackfillReport()
    if not todo:
        log(f"[hub] every module of {hub_dir} has its held-out accuracy")
        return report
    net, tok = load_base(resolve_model(model))
    known = {m["source_task"] for m in todo if m.get("source_task") and tasks.exists(m["source_task"])}
    for entry in tqdm(todo, desc="held-out", unit="module", disable=not progress):
        task = entry.get("source_task")
        if not task or task not in known:
            report.skipped.append(entry["name"])
            log(f"[hub] {entry['name']}: its source task is not recorded or cannot be loaded here, skipped")
            continue
        cfg = TrainConfig(rank=entry.get("rank", 8), max_length=entry.get("max_length", 256))
        split = heldout_split(tok, tasks.load_task(task), cfg)
        if entry.get("train_examples") != len(split[0]):  # e.g. trained on every example
            report.mismatched.append(entry["name"])
            log(f"[hub] {entry['name']}: trained on {entry.get('train_examples')} examples, the split "
                f"leaves {len(split[0])} for training: it saw its held-out rows; retrain it "
                "(move it out of the hub, then `hub build --tasks ...`); not written")
            continue
        got = measure_heldout(net, tok, hub_dir / entry["path"], split, cfg)
        recorded = entry.get("heldout_loss")
        if recorded is not None and abs(got["heldout_loss"] - recorded) > LOSS_RTOL * abs(recorded):
            report.mismatched.append(entry["name"])
            log(f"[hub] {entry['name']}: held-out loss {got['heldout_loss']:.4f} now, {recorded} recorded: "
                "not the split it was measured on (its task's data or format changed?), not written")
            continue
        entry.update({"heldout_accuracy": round(got["heldout_accuracy"], 4), "heldout_metric": got["heldout_metric"],
                      "heldout_backfilled": True})
        if recorded is None:
            entry.update(heldout_loss=round(got["heldout_loss"], 4), heldout_examples=got["heldout_examples"])
        write_hub_json(hub_dir, manifest)
        report.measured.append(entry["name"])
        log(f"[hub] {entry['name']}: held-out {got['heldout_metric']} {got['heldout_accuracy']:.1f} %, "
            f"loss {got['heldout_loss']:.4f} (recorded {recorded})")
    return report
