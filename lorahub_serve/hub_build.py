"""`lorahub-serve hub build`: train one LoRA per upstream BIG-bench task into a hub folder.

Resumable: `hub.json` is rewritten (atomically) after every module, and a module whose folder
and manifest entry exist is skipped, so a killed build started again trains only the rest.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .atomic import write_json_atomic
from .data import bigbench, is_bbh, refuse_bbh
from .engine.hub import ADAPTER_FILE
from .training import TrainConfig, train_lora

HUB_FORMAT = 1


def module_name(task: str) -> str:
    return task.replace("/", "__")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# The default hub's tasks: English multiple-choice tasks from upstream BIG-bench with enough short
# examples (picked from `suitable_tasks()`, dropping non-English and ASCII-art ones), most
# broadly useful first so a partial build is still a good hub.
DEFAULT_HUB_TASKS: tuple[str, ...] = (
    "logical_fallacy_detection", "strategyqa", "social_iqa", "epistemic_reasoning",
    "implicatures", "physical_intuition", "presuppositions_as_nli", "entailed_polarity",
    "winowhy", "vitaminc_fact_verification", "goal_step_wikihow/goal_inference", "anachronisms",
    "fantasy_reasoning", "misconceptions", "moral_permissibility", "odd_one_out",
    "elementary_math_qa/language_hint_only", "arithmetic/1_digit_addition", "cs_algorithms/lcs",
    "empirical_judgments", "metaphor_boolean", "irony_identification", "dark_humor_detection",
    "intent_recognition", "bbq_lite_json/age_ambig", "strange_stories/multiple_choice",
    "simple_ethical_questions", "unit_conversion/chained_conversion", "physics",
    "phrase_relatedness", "contextual_parametric_knowledge_conflicts", "emoji_movie",
    "metaphor_understanding/lit2met", "social_support", "color/hcl", "hindu_knowledge",
    "movie_dialog_same_or_different", "undo_permutation/reorder_byswap",
    "symbol_interpretation/name_agnostic", "fact_checker/covid19_scientific",
)


def suitable_tasks(min_examples: int = 80, max_chars: int = 700, limit: int | None = None) -> list[str]:
    """Upstream (non-BBH) tasks with enough short examples, one per family, MC tasks first."""
    chosen: dict[str, tuple[int, str]] = {}
    for task in bigbench.list_tasks():
        family = task.split("/")[0]
        if is_bbh(task) or family in chosen:
            continue
        try:
            exs = bigbench.load_task(task)
        except Exception:  # noqa: BLE001 - a few upstream files are malformed; skip them
            continue
        if len(exs) < min_examples:
            continue
        med = statistics.median(len(e.input) + len(e.output) for e in exs[:200])
        if med > max_chars or max(len(e.output) for e in exs[:200]) > 120:
            continue
        mc = bigbench.task_info(task).kind == "multiple_choice"
        chosen[family] = (0 if mc else 1, task)
    ordered = [t for _, t in sorted(chosen.values())]
    return ordered[:limit] if limit else ordered


def load_manifest(hub_dir: Path) -> dict:
    import json

    path = Path(hub_dir) / "hub.json"
    if path.exists():
        return json.loads(path.read_text())
    return {"format": HUB_FORMAT, "modules": []}


def _to_fp16(adapter_dir: Path) -> None:
    """Store factors in float16 (half the size; the engine computes in float32)."""
    path = adapter_dir / ADAPTER_FILE
    tensors = {k: v.to(torch.float16).contiguous() for k, v in load_file(path).items()}
    save_file(tensors, path, metadata={"format": "pt"})


def build_hub(model: str, hub_dir: Path, tasks: list[str] | None = None, n_modules: int = 32,
              cfg: TrainConfig = TrainConfig(), log=print) -> dict:
    from tqdm import tqdm

    from .models import load_base, resolve_model

    hub_dir = Path(hub_dir)
    tasks = list(tasks or DEFAULT_HUB_TASKS[:n_modules])
    for t in tasks:
        refuse_bbh(t, "hub training")
    manifest = load_manifest(hub_dir)
    manifest.update({"format": HUB_FORMAT, "base_model": str(model)})
    done = {m["source_task"] for m in manifest["modules"] if (hub_dir / m["path"] / ADAPTER_FILE).exists()}
    todo = [t for t in tasks if t not in done]
    log(f"[hub] {len(done)} modules present, {len(todo)} to train into {hub_dir}")
    if not todo:
        return manifest
    torch.set_num_threads(max(1, torch.get_num_threads()))
    net, tok = load_base(resolve_model(model))
    bar = tqdm(todo, desc="hub build", unit="module")
    for task in bar:
        exs = bigbench.load_task(task)
        name = module_name(task)
        out = hub_dir / "modules" / name
        t0 = time.time()
        try:
            stats = train_lora(
                net, tok, exs, out, cfg,
                progress=lambda s, n, loss, task=task: bar.set_postfix(task=task[:24], step=f"{s}/{n}", loss=f"{loss:.3f}"),
            )
        except ValueError as e:
            log(f"[hub] skipped {task}: {e}")
            continue
        _to_fp16(out)
        entry = {
            "name": name, "path": f"modules/{name}", "source_task": task,
            "sha256": sha256_file(out / ADAPTER_FILE), "rank": cfg.rank, "alpha": cfg.alpha,
            "target_modules": list(cfg.target_modules), "steps": cfg.steps, "lr": cfg.lr, "max_length": cfg.max_length,
            "final_loss": round(stats["final_loss"], 4), "train_examples": stats["examples"],
            "seconds": round(time.time() - t0, 1),
        }
        manifest["modules"] = [m for m in manifest["modules"] if m["name"] != name] + [entry]
        write_json_atomic(hub_dir / "hub.json", manifest)
        log(f"[hub] {task}: loss {stats['first_loss']:.3f} -> {stats['final_loss']:.3f} in {entry['seconds']} s")
    return manifest
