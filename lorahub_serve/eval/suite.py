"""`lorahub-serve suite build`: the headroom suite, held-out tasks this model can learn.

A composition can only be judged on a task where gradient training on the task itself moves
the model. For each candidate task (never in the hub, never BBH, never reserved):
1. the task's evaluation set is fixed: the first `n_eval` examples of a seed-0 shuffle (the same
   `tasks.split` the evaluation uses; shots are drawn from the rest);
2. an *oracle* LoRA is trained with the hub's recipe on the examples outside it and kept in its
   own hub folder (never in the hub the searches draw from);
3. base model and oracle are scored on the first `gate_n` evaluation examples (rank
   classification for multiple choice, greedy exact match for generative tasks), beside the
   majority-label rate and chance;
4. the task is kept when the oracle beats both the base model and the majority-label rate by at
   least `min_gain` points, unless a kept task of its family already holds most of its answers
   (`duplicate_of`: the same skill in another prompt would count twice in the average).
The manifest (`suites/<name>.json`) is rewritten atomically after every candidate, so a killed
build resumes at the next one; oracles already trained are reused.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lorahub_serve.atomic import write_json_atomic
from lorahub_serve.data import tasks as task_data
from lorahub_serve.data.tasks import RESERVED_FAMILIES
from lorahub_serve.formats import ADAPTER_WEIGHTS

# Candidates of the reasoning-gym suite: generators and configs no hub module is trained on
# (`hub.build.RG_HUB_TASKS`); each is gated by its oracle and labelled by its distance from the hub.
RG_SUITE_CANDIDATES: tuple[str, ...] = (
    # config-shift: the generator is in the hub at another config
    "rg/basic_arithmetic@add-2d", "rg/gcd@le100", "rg/count_bits@le1023", "rg/products@2d",
    "rg/number_sequence@long", "rg/color_cube_rotation@2rot", "rg/decimal_chain_sum@3t1d", "rg/maze@mid",
    "rg/word_sequence_reversal@long", "rg/gcd@le40", "rg/course_schedule@mid", "rg/decimal_chain_sum@2t2d",
    # near: another generator of the category is in the hub
    "rg/lcm@le20", "rg/lcm@le50", "rg/decimal_arithmetic@2t1p", "rg/needle_haystack@small",
    "rg/spiral_matrix@2-3", "rg/number_filtering@small", "rg/fraction_simplification@plain",
    "rg/calendar_arithmetic", "rg/sokoban@small",
    # far: no generator of the category is in the hub (algebra, logic, geometry, probability, arc)
    "rg/simple_equations@2t20", "rg/syllogism", "rg/circuit_logic@small", "rg/simple_equations@pm-9",
    "rg/complex_arithmetic@add-3", "rg/simple_geometry@tri", "rg/knights_knaves", "rg/zebra_puzzles@2x2",
    "rg/polynomial_multiplication@lin", "rg/arc_1d@8-10", "rg/simple_integration@1t",
)
# Candidates asked on 2026-12-07 and withdrawn before they were gated (2026-12-08), after a scan of
# answer spread, prompt length and usable items; the manifest records them and why (`withdrawn`),
# and no longer lists them as not yet gated.
WITHDRAWN: dict[str, str] = {
    **dict.fromkeys(("rg/rotten_oranges@3-4", "rg/self_reference@d1"), "majority answer >= 35 %"),
    **dict.fromkeys(("rg/string_splitting",), "prompts over the recipe's 256 tokens"),
    "rg/coin_flip@small": "30 distinct questions: fewer than 100 evaluation examples",
    "rg/power_function@int": "the generator draws float bases: long decimal answers",
    **dict.fromkeys(("rg/base_conversion@2-3-le50", "rg/caesar_cipher@rot1"),
                    "a character-level skill this BPE model did not learn in the scan"),
    "rg/leg_counting@1-3x9": "its hub module at an easier config reached 16 % held out",
    **dict.fromkeys(("rg/word_ladder", "rg/cryptarithm", "rg/advanced_geometry", "rg/simple_geometry"),
                    "multi-step search or long numeric answers; an easier config replaces it where one exists"),
    "rg/complex_arithmetic@add-5": "replaced by the easier add-3",
}

# Candidates: held-out tasks with >= 200 short examples, multiple choice and generative, from
# families the hub covers ("near") and families it does not ("far").
SUITE_CANDIDATES: tuple[str, ...] = (
    "fact_checker/fever", "fact_checker/politifact", "goal_step_wikihow/step_inference",
    "goal_step_wikihow/step_ordering", "elementary_math_qa/question_only",
    "cs_algorithms/valid_parentheses", "intent_recognition", "language_identification", "kannada",
    "parsinlu_qa", "hinglish_toxicity", "multiemo/reviews_sentence_en",
    "modified_arithmetic/three_digit_subtraction_control",
    "modified_arithmetic/two_digit_multiplication_control", "periodic_elements/subtask_1",
    "linguistic_mappings/plural_json", "linguistic_mappings/past_tense_json",
    "linguistic_mappings/sentence_negation_json", "linguistic_mappings/question_formation_json",
    "unnatural_in_context_learning/identity", "unnatural_in_context_learning/reverse_natural_content",
    "natural_instructions/subtask033_winogrande_answer_generation",
    "natural_instructions/subtask039_qasc_find_overlapping_words", "chinese_remainder_theorem",
    "matrixshapes", "kanji_ascii/kanji_ascii_pronunciation", "simp_turing_concept/witness_set",
    "chess_state_tracking/real_short", "list_functions/00_shot_baseline", "cryptonite",
    # moved from the broad hub's list once the first gates showed generative mappings learnable
    "unnatural_in_context_learning/dates_unnatural_form", "unnatural_in_context_learning/dates_unnatural_content",
    "unnatural_in_context_learning/dates_unnatural_content_and_form",
    "unnatural_in_context_learning/unnatural_addition_2_digit", "linguistic_mappings/de_past_tense_json",
    "ascii_word_recognition",  # (cause_and_effect/one_sentence left: the hub's two_sentences is its twin)
    # generative tasks outside both lists, added when 12 of the first 17 gated kept were generative
    "linguistic_mappings/pronoun_replacement_json", "unnatural_in_context_learning/reverse_to_natural_content",
    "modified_arithmetic/three_digit_subtraction_plus_one", "simp_turing_concept/additional_set_1",
    # far generative tasks with >= 150 examples that fit 128 tokens, gated 2026-12-03 at 14 kept
    "gender_inclusive_sentences_german", "natural_instructions/subtask051_multirc_correct_answer_single_sentence",
    # gated 2026-12-03 at 15 kept: short generative tasks with no input in common with a suite task
    # (plural_regular_json and past_tense_regular_json are subsets of suite tasks, so left out;
    # de_past_tense_regular_json passed the gate, 42 against 0, but repeats de_past_tense_json's answers)
    "linguistic_mappings/de_past_tense_regular_json", "natural_instructions/subtask041_qasc_answer_generation",
    "natural_instructions/subtask036_qasc_topic_word_to_generate_related_fact", "language_games/pig_latin_decode",
)


def family(task: str) -> str:
    """The task's generator (reasoning-gym dataset, BIG-bench family)."""
    return task_data.kinship(task)[0]


def eval_size(n_examples: int, cap: int = 250) -> int:
    """Evaluation examples of a task: up to `cap`, at most half of it (the rest trains the oracle
    and gives the shots)."""
    return min(cap, n_examples // 2)


def closeness(task: str, hub_tasks: set[str]) -> str:
    """How far `task` is from what the hub was trained on:
    - "config-shift": its generator is in the hub at another config;
    - "near": another generator of its category is in the hub;
    - "far": nothing of its category is.
    A BIG-bench family has no category above it: "near" when another subtask of it is in the hub."""
    generator, category = task_data.kinship(task)
    kin = [task_data.kinship(t) for t in hub_tasks if t != task]
    if generator == category:  # BIG-bench: the family is the only level
        return "near" if any(g == generator for g, _ in kin) else "far"
    if any(g == generator for g, _ in kin):
        return "config-shift"
    return "near" if any(c == category for _, c in kin) else "far"


@dataclass
class Candidate:
    task: str
    family: str
    kind: str
    metric: str  # "rc" | "em"
    n_examples: int
    n_eval: int
    gate_n: int
    chance: float
    majority: float
    base: float
    oracle: float
    gain: float  # oracle - max(base, majority)
    kept: bool
    closeness: str
    oracle_seconds: float
    duplicate_of: str | None = None  # a kept suite task that already holds most of its answers
    recipe_changes: dict | None = None  # this oracle's departures from the manifest's oracle_recipe
    provenance: dict | None = None  # where the task's examples come from (source, version, config, seed)


def answer_overlap(task: str, other: str) -> float:
    """Share of `task`'s distinct answers that are also answers of `other` (a subset written in
    another prompt, e.g. de_past_tense_regular_json inside de_past_tense_json, reads ~1)."""
    mine = {e.output.strip() for e in task_data.load_task(task)}
    theirs = {e.output.strip() for e in task_data.load_task(other)}
    return len(mine & theirs) / max(len(mine), 1)


def duplicate_of(task: str, kept: list[str], threshold: float = 0.5) -> str | None:
    """The first kept suite task of the same family whose answers cover at least `threshold` of
    `task`'s: such a task would count one skill twice in the suite's average."""
    for other in kept:
        if other != task and family(other) == family(task) and answer_overlap(task, other) >= threshold:
            return other
    return None


def split_for_oracle(task: str, cap: int = 250):
    """(oracle training examples, the fixed evaluation set) of `task`."""
    return task_data.train_and_eval(task, eval_size(len(task_data.load_task(task)), cap))


def build_suite(model: str, hub_dir: Path, oracle_dir: Path, manifest_path: Path,
                candidates: tuple[str, ...] = SUITE_CANDIDATES, cfg=None, gate_n: int = 100,
                min_gain: float = 20.0, log=print) -> dict:
    """Train and gate every candidate not yet in the manifest; returns the manifest."""
    import json

    from tqdm import tqdm

    from lorahub_serve.adapter_scoring import accuracy, majority_rate
    from lorahub_serve.formats import read_hub_json
    from lorahub_serve.hub.build import TrainedModule, module_name, record_module, train_module
    from lorahub_serve.hub.train import TrainConfig
    from lorahub_serve.models import load_base, resolve_model

    cfg = cfg or TrainConfig(steps=24, lr=2e-3, max_length=128)
    hub_tasks = {m["source_task"] for m in read_hub_json(Path(hub_dir))["modules"]}
    for t in candidates:
        task_data.refuse_reserved(t, "the headroom suite")
        if task_data.is_eval_only(t) or t in hub_tasks:
            raise ValueError(f"{t}: suite candidates must be neither BBH tasks nor hub modules")
    manifest = (json.loads(manifest_path.read_text()) if manifest_path.exists() else
                {"format": 1, "candidates": []})
    # The first build's recipe stays the suite's; a later build with another (e.g. a longer
    # max_length for a task whose examples do not fit) records what it changed on its candidates.
    asked = json.loads(json.dumps(asdict(cfg)))  # as the manifest holds it (tuples as lists)
    recipe = manifest.get("oracle_recipe") or asked
    changes = {k: v for k, v in asked.items() if recipe.get(k) != v} or None
    manifest.update({"model": str(model), "hub": str(hub_dir), "oracle_hub": str(oracle_dir),
                     "min_gain": min_gain, "gate_n": gate_n, "reserved_families": list(RESERVED_FAMILIES),
                     "oracle_recipe": recipe, "eval_split": "first n_eval of a seed-0 shuffle "
                     "(tasks.split); oracles train on the rest"})
    asked = manifest.get("asked") or [c["task"] for c in manifest["candidates"]]
    manifest["asked"] = asked + [t for t in candidates if t not in asked]
    done = {c["task"] for c in manifest["candidates"]}
    todo = [t for t in candidates if t not in done]
    oracles = read_hub_json(Path(oracle_dir), missing_ok=True)
    oracles.setdefault("base_model", str(model))
    net, tok = load_base(resolve_model(model))
    for task in tqdm(todo, desc="suite build", unit="task"):
        twin = duplicate_of(task, [x["task"] for x in manifest["candidates"] if x["kept"]])
        if twin is not None:
            log(f"[suite] {task}: dropped, its answers are mostly {twin}'s (a suite task)")
            info = task_data.task_info(task)
            manifest["candidates"].append(asdict(Candidate(
                task, family(task), info.kind, "", info.n_examples, 0, 0, 100.0 * info.chance, 0.0, 0.0,
                0.0, 0.0, False, closeness(task, hub_tasks), 0.0, duplicate_of=twin)))
            _refresh_lists(manifest)
            _label(manifest, hub_tasks)
            write_json_atomic(manifest_path, manifest)
            continue
        train, evalset = split_for_oracle(task)
        gate = evalset[:gate_n]
        t0 = time.time()
        folder = Path(oracle_dir) / "modules" / module_name(task)
        if not (folder / ADAPTER_WEIGHTS).exists():
            mod: TrainedModule = train_module(net, tok, task, cfg, examples=train)
            if mod.skipped:
                log(f"[suite] {task}: no oracle ({mod.skipped})")
                continue
            record_module(Path(oracle_dir), oracles, mod, cfg)
        from peft import PeftModel

        metric, base = accuracy(net, tok, gate, dtype=cfg.dtype)
        peft_model = PeftModel.from_pretrained(net, folder).eval()
        _, oracle = accuracy(peft_model, tok, gate, dtype=cfg.dtype)
        net = peft_model.unload()
        info = task_data.task_info(task)
        majority = majority_rate(gate)
        chance = 100.0 * info.chance
        gain = oracle - max(base, majority)
        c = Candidate(task, family(task), info.kind, metric, len(train) + len(evalset), len(evalset),
                      len(gate), round(chance, 1), round(majority, 1), round(base, 1), round(oracle, 1),
                      round(gain, 1), gain >= min_gain, closeness(task, hub_tasks),
                      round(time.time() - t0, 1), recipe_changes=changes,
                      provenance=task_data.provenance(task))
        log(f"[suite] {task}: base {base:.0f}, majority {majority:.0f}, oracle {oracle:.0f} -> "
            f"{'kept' if c.kept else 'dropped'}")
        manifest["candidates"] = [x for x in manifest["candidates"] if x["task"] != task] + [asdict(c)]
        _refresh_lists(manifest)  # after every candidate: a build stopped here leaves a true manifest
        _label(manifest, hub_tasks)
        write_json_atomic(manifest_path, manifest)
    _label(manifest, {m["source_task"] for m in read_hub_json(Path(hub_dir))["modules"]})  # it may have grown
    kept_before: list[str] = []  # a record gated before this check: dropped if it repeats an earlier one
    for c in manifest["candidates"]:
        if c["kept"] and c.get("duplicate_of") is None:
            c["duplicate_of"] = duplicate_of(c["task"], kept_before)
            c["kept"] = c["duplicate_of"] is None
            if c["kept"]:
                kept_before.append(c["task"])
            else:
                log(f"[suite] {c['task']}: dropped, its answers are mostly {c['duplicate_of']}'s")
    _refresh_lists(manifest)
    write_json_atomic(manifest_path, manifest)
    return manifest


def _label(manifest: dict, hub_tasks: set[str]) -> None:
    """Every candidate's distance label against `hub_tasks`, which the manifest records: a hub
    that grows after the build leaves the labels true of the modules they name."""
    for c in manifest["candidates"]:
        c["closeness"] = closeness(c["task"], hub_tasks)
    manifest["labelled_against"] = sorted(hub_tasks)


def _refresh_lists(manifest: dict) -> None:
    """The kept tasks, and the candidates asked for (by any build) not gated yet."""
    manifest["tasks"] = [x["task"] for x in manifest["candidates"] if x["kept"]]
    gated = {c["task"] for c in manifest["candidates"]}
    manifest["withdrawn"] = {t: WITHDRAWN[t] for t in manifest.get("asked", []) if t in WITHDRAWN and t not in gated}
    manifest["not_yet_gated"] = [t for t in manifest.get("asked", [])
                                 if t not in gated and t not in manifest["withdrawn"]]
