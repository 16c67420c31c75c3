"""skill_selection: does LoraHub find the module whose *skill* fits, when the format cannot tell?

On the headroom suite the searches put their weight on the module whose answer format fits the
task (issue 19). Here every task shares one format (`Q: w1 w2 w3\nA:` -> ` answer`), so the
few-shot loss can only tell modules apart by what they do. Six skills (copy, reverse, first word,
last word, sort, count) are trained as modules on one vocabulary (`hub build --examples-dir`, our
own generated examples: no BIG-bench needed), added to the committed 120-module hub as
distractors, and each skill is then adapted to from 5 shots on *another* vocabulary, with the
defaults (select loss, K = 20, budget 40).

Per task-seed: was the skill's module selected, and did it get the largest |weight|? Exact-match
accuracy on 100 held-out examples (fixed across seeds and methods; the seeds draw the shots) of
zero-shot, 5-shot ICL, LoraHub, and the skill's module alone (the ceiling this hub offers), all
generated greedily by the engine in one batch.

    .venv/bin/python bench/skill_selection.py [--seeds 1-3] [--steps 60] [--eval 100]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

TRAIN_WORDS = ("cat", "dog", "horse", "tiger", "goat", "sheep", "apple", "lemon", "mango", "peach",
               "pear", "plum", "hammer", "saw", "drill", "rake", "spoon", "fork")
HELDOUT_WORDS = ("red", "blue", "green", "yellow", "purple", "black", "car", "bus", "truck", "train",
                 "piano", "flute", "drum", "harp", "river", "bridge", "window", "garden")
SKILLS = {
    "copy": lambda ws: " ".join(ws),
    "reverse": lambda ws: " ".join(reversed(ws)),
    "first_word": lambda ws: ws[0],
    "last_word": lambda ws: ws[-1],
    "sort": lambda ws: " ".join(sorted(ws)),
    "count": lambda ws: str(len(ws)),
}


def skill_examples(skill: str, words, n: int, seed: str) -> list[dict]:
    rng = random.Random(f"{skill}:{seed}")
    out, seen = [], set()
    while len(out) < n:
        ws = rng.sample(words, rng.randint(2, 5))
        key = " ".join(ws)
        if key in seen:
            continue
        seen.add(key)
        out.append({"input": f"Q: {key}\nA:", "output": f" {SKILLS[skill](ws)}"})
    return out


def build_hub(base_hub: Path, out: Path, steps: int, model: str) -> Path:
    """The skill modules (trained once, resumable) plus the base hub's modules as distractors."""
    from lorahub_serve.data.examples import from_records
    from lorahub_serve.formats import read_hub_json, write_hub_json
    from lorahub_serve.hub.build import build_hub as hub_build
    from lorahub_serve.hub.train import TrainConfig

    own = {f"skill_{s}": from_records(skill_examples(s, TRAIN_WORDS, 300, "train")) for s in SKILLS}
    cfg = TrainConfig(rank=8, alpha=16, steps=steps, lr=2e-3, max_length=64, dtype="bfloat16")
    skills = out / "skills"
    hub_build(model, skills, own_examples=own, cfg=cfg)
    combined = out / "combined"
    (combined / "modules").mkdir(parents=True, exist_ok=True)
    manifest = read_hub_json(skills)
    for src, hub in ((skills, manifest), (base_hub, read_hub_json(base_hub))):
        for m in hub["modules"]:
            link = combined / m["path"]
            if not link.exists():
                link.symlink_to((src / m["path"]).resolve())
    base = read_hub_json(base_hub)
    write_hub_json(combined, {**manifest, "modules": manifest["modules"] + base["modules"]})
    return combined


def main() -> None:
    from _meta import write_result

    from lorahub_serve import paths
    from lorahub_serve.data.examples import from_records
    from lorahub_serve.engine.adapt import Engine
    from lorahub_serve.engine.search import SearchConfig
    from lorahub_serve.eval.generation import EngineGenerator
    from lorahub_serve.eval.headroom_report import bootstrap_ci, reading
    from lorahub_serve.eval.run import icl_prompt
    from lorahub_serve.scoring import accuracy

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--hub", default=str(paths.repo_root() / "hubs" / "smollm2-135m"))
    ap.add_argument("--work", default=str(paths.home() / "skill-selection"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seeds", default="1-3")
    ap.add_argument("--eval", type=int, default=100)
    ap.add_argument("--budget", type=int, default=40)
    ap.add_argument("--name", default="skill_selection")
    a = ap.parse_args()
    lo, _, hi = a.seeds.partition("-")
    seeds = list(range(int(lo), int(hi or lo) + 1))

    hub = build_hub(Path(a.hub), Path(a.work), a.steps, a.model)
    engine = Engine(a.model, hub)
    names = [m.name for m in engine.hub_modules]
    gen = EngineGenerator(engine)
    rows = []
    for skill in SKILLS:
        pool = from_records(skill_examples(skill, HELDOUT_WORDS, a.eval + 60, "heldout"))
        evalset, rest = pool[:a.eval], pool[a.eval:]  # fixed across seeds and methods
        target = names.index(f"skill_{skill}")
        for seed in seeds:
            shots = random.Random(seed).sample(rest, 5)
            res = engine.adapt(shots, task=f"{skill}-{seed}", config=SearchConfig(budget=a.budget, seed=seed, select="loss"),
                               progress=False)
            idx = list(res.module_idx)
            w = np.asarray(res.weights, dtype=np.float32)
            selected = target in idx
            if not selected:  # the skill's module alone still needs a slot in the batch
                idx, w = idx + [target], np.append(w, 0.0).astype(np.float32)
            alone = np.zeros(len(idx), np.float32)
            alone[idx.index(target)] = 1.0
            top = names[idx[int(np.argmax(np.abs(w)))]]
            plain = [e.input for e in evalset]
            icl = [icl_prompt(shots, e) for e in evalset]
            longest = max(len(engine.tokenizer(e.output)["input_ids"]) for e in pool) + 2
            out = gen.answers(f"{skill}-{seed}", idx, {"base": None, "lorahub": w, "alone": alone},
                              [("zero_shot", "base", plain), ("icl", "base", icl), ("lorahub", "lorahub", plain),
                               ("skill_module", "alone", plain)], longest)
            row = {"skill": skill, "seed": seed, "selected": selected, "top_module": top,
                   "identified": top == f"skill_{skill}",
                   "weight_on_skill": round(float(w[idx.index(target)]), 3),
                   **{m: accuracy(out[m], evalset) for m in out}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    engine.close()

    methods = ("zero_shot", "icl", "lorahub", "skill_module")
    md = [(f"Six skills in one shared format, their modules trained on one vocabulary ({a.steps} steps, "
          f"bf16, rank 8) and added to `{a.hub}` ({len(names)} modules in all); each skill adapted to "
          f"from 5 shots on another vocabulary with `adapt`'s defaults (select loss, K = 20, budget {a.budget}). "
          f"{a.eval} evaluation examples per skill, fixed across seeds and methods; seeds {a.seeds} draw the "
          f"shots. Exact match, greedy, engine generation ({engine.dtype})."), "",
          "| skill | seed | skill module selected | largest weight on | its weight | "
          + " | ".join(methods) + " |", "|---|---|---|---|---|" + "---|" * len(methods)]
    for r in rows:
        md.append(f"| {r['skill']} | {r['seed']} | {'yes' if r['selected'] else 'no'} | {r['top_module']} | "
                  f"{r['weight_on_skill']:+.2f} | " + " | ".join(f"{r[m]:.0f}" for m in methods) + " |")
    figures: dict = {"rows": rows, "means": {}, "paired": {}}
    md += ["", "| method | mean over task-seeds [95 % CI] |", "|---|---|"]
    for m in methods:
        ci = bootstrap_ci(np.array([r[m] for r in rows]))
        figures["means"][m] = ci
        md.append(f"| {m} | {ci[0]:.1f} [{ci[1]:.1f}, {ci[2]:.1f}] |")
    md += ["", "| paired difference | mean [95 % CI] | reading |", "|---|---|---|"]
    for other in ("icl", "zero_shot", "skill_module"):
        ci = bootstrap_ci(np.array([r["lorahub"] - r[other] for r in rows]))
        figures["paired"][f"lorahub - {other}"] = ci
        md.append(f"| lorahub - {other} | {ci[0]:+.1f} [{ci[1]:+.1f}, {ci[2]:+.1f}] | {reading(ci)} |")
    n = len(rows)
    md += ["", (f"Skill module among the K selected: {sum(r['selected'] for r in rows)}/{n} task-seeds; "
               f"largest |weight| on it: {sum(r['identified'] for r in rows)}/{n}.")]
    text = "\n".join(md)
    print(text)
    for p in write_result(a.name, figures, text):
        print("wrote", p)


if __name__ == "__main__":
    main()
