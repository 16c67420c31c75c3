"""`lorahub-serve hub build`: train one LoRA per upstream BIG-bench task into a hub folder.

Resumable: `hub.json` is rewritten (atomically) after every module, and a module whose folder
and manifest entry exist is skipped, so a killed build started again trains only the rest.
Where modules train is a parameter: `build_hub(..., trainers=...)` takes a trainer pool (the CLI
passes `cluster.hub_trainers.trainer_pool` for `--actors N`, `--ray-address`); by default they
train here, one at a time. This process writes every module, so actors need no shared filesystem.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lorahub_serve.atomic import atomic_dir
from lorahub_serve.data import tasks as task_data
from lorahub_serve.data.examples import load_jsonl
from lorahub_serve.formats import ADAPTER_WEIGHTS, HUB_FORMAT, read_hub_json, write_hub_json
from lorahub_serve.hub.train import TrainConfig, train_lora
from lorahub_serve.work_pool import InlinePool


def module_name(task: str) -> str:
    return task.replace("/", "__")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# The default hub's tasks: English multiple-choice tasks from upstream BIG-bench with enough short
# examples (dropping non-English and ASCII-art ones), most
# broadly useful first so a partial build is still a good hub.
DEFAULT_HUB_TASKS: tuple[str, ...] = (
    "logical_fallacy_detection", "strategyqa", "social_iqa", "epistemic_reasoning",
    "implicatures", "physical_intuition", "presuppositions_as_nli", "entailed_polarity",
    "winowhy", "vitaminc_fact_verification", "goal_step_wikihow/goal_inference", "anachronisms",
    "fantasy_reasoning", "misconceptions", "moral_permissibility", "odd_one_out",
    "elementary_math_qa/language_hint_only", "arithmetic/1_digit_addition", "cs_algorithms/lcs",
    "empirical_judgments", "metaphor_boolean", "irony_identification", "dark_humor_detection",
    "bbq_lite_json/age_ambig", "strange_stories/multiple_choice",
    "simple_ethical_questions", "unit_conversion/chained_conversion", "physics",
    "phrase_relatedness", "contextual_parametric_knowledge_conflicts", "emoji_movie",
    "metaphor_understanding/lit2met", "social_support", "color/hcl", "hindu_knowledge",
    "movie_dialog_same_or_different", "undo_permutation/reorder_byswap",
    "symbol_interpretation/name_agnostic", "fact_checker/covid19_scientific",
    "emojis_emotion_prediction", "auto_categorization", "tense", "qa_wikidata", "operators",
    "periodic_elements/subtask_0", "gem/common_gen", "word_unscrambling",
    # generative, so that compositions can also answer in free text
    "modified_arithmetic/three_digit_addition_control",
    "natural_instructions/subtask020_mctaco_span_based_question", "language_games/pig_latin_encode",
    "codenames", "unnatural_in_context_learning/dates",
)


# The broader hub (issue 19): every other usable upstream task (>= 20 examples that fit 128
# tokens, outputs <= 160 characters), round-robin over families so a partial build is diverse,
# at most 3 subtasks a family (10 for multiemo, one per language). Left out: the headroom suite's
# candidates (`eval.suite.SUITE_CANDIDATES`) and their twins (the same data in another form:
# `plural_regular_json` beside `plural_json`), BBH, and the reserved families (and look-alikes of
# them: simple_arithmetic_json, unit_interpretation). Seven tasks moved to the suite's candidates
# once the first gates showed which kinds this model learns (their twins left with them).
BROAD_HUB_TASKS: tuple[str, ...] = (
    "multiemo/all_sentence_zh", "unnatural_in_context_learning/dates",
    "intersect_geometry/shapes_2",
    "chess_state_tracking/synthetic_medium", "checkmate_in_one",
    "modified_arithmetic/three_digit_addition_plus_one",
    "kanji_ascii/kanji_ascii_meaning", "swahili_english_proverbs", "cryobiology_spanish",
    "abstract_narrative_understanding/99_distractors", "entailed_polarity_hindi", "timedial",
    "english_russian_proverbs", "similarities_abstraction", "metaphor_understanding/met2lit",
    "swedish_to_german_proverbs", "analytic_entailment", "general_knowledge",
    "mathematical_induction", "persian_idioms", "undo_permutation/reorder_byswap",
    "sentence_ambiguity", "figure_of_speech_detection", "code_line_description", "common_morpheme",
    "nonsense_words_grammar", "scientific_press_release", "misconceptions_russian", "riddle_sense",
    "bridging_anaphora_resolution_barqa", "identify_odd_metaphor", "known_unknowns",
    "physics_questions", "crass_ai", "human_organs_senses",
    "conceptual_combinations/emergent_properties", "multiemo/all_sentence_ja",
    "intersect_geometry/shapes_3",
    "chess_state_tracking/real_medium", "multiemo/all_sentence_pl",
    "intersect_geometry/shapes_4",
    "cause_and_effect/two_sentences",
    "multiemo/hotels_sentence_ru",
    "intersect_geometry/shapes_5", "multiemo/all_sentence_pt",
    "multiemo/hotels_sentence_nl",
    "multiemo/hotels_sentence_it", "multiemo/all_sentence_es", "multiemo/hotels_sentence_de",
    "multiemo/hotels_sentence_fr", "international_phonetic_alphabet_transliterate",
    "gem/cs_restaurants", "rephrase", "sufficient_information", "crash_blossom", "logical_sequence",
    "auto_debugging", "language_games/egg_encoded_target", "language_games/egg_plain_target",
    "language_games/pig_latin_encoded_target", "mult_data_wrangling/add_punctuation_1_dates_1",
    "mult_data_wrangling/add_punctuation_1_dates_2",
    "mult_data_wrangling/add_punctuation_2_dates_1", "discourse_marker_prediction",
    "hhh_alignment/harmless", "strange_stories/boolean", "what_is_the_tao", "english_proverbs",
    "undo_permutation/reorder_words", "hhh_alignment/other", "novel_concepts",
    "undo_permutation/reorder_chars",
    # six of the above had too few examples that fit 128 tokens; these nine families have none
    # in the suite's candidates (2026-12-03)
    "gem/e2e_nlg", "topical_chat", "gem/webnlg_en", "hindi_question_answering", "gem/asset",
    "parsinlu_reading_comprehension", "gem/webnlg_ru", "few_shot_nlg", "gem/turk",
)


# The reasoning-gym modules of the default hub (issue 34), round-robin over categories so that a
# partial build is diverse. Categories covered: arithmetic, algorithmic, games, cognition, graphs,
# code, induction. algebra, logic, geometry and probability are left out on purpose: their
# generators are the headroom suite's "far" tasks. Never here: the suite's tasks (other configs of
# these generators, and generators of these categories that are not listed) and the reserved
# datasets (chain_sum, family_relationships, aiw). fraction_simplification, calendar_arithmetic and
# number_filtering left this list for the suite's "near" tasks before any was trained (2026-12-08);
# ab, group_anagrams, countdown and rectangle_count took their places.
_RG_BY_CATEGORY: tuple[tuple[str, ...], ...] = (
    ("basic_arithmetic@add-1d", "gcd@le20", "count_bits@le255", "leg_counting@1-2x5", "products@1d",
     "basic_arithmetic@mul-1d", "prime_factorization@le100", "decimal_chain_sum@2t1d",
     "bitwise_arithmetic@d1", "time_intervals",
     "basic_arithmetic@add3-1d", "gcd@le60", "leg_counting@3x3", "dice",
     "number_format", "gsm_symbolic"),
    ("letter_counting@3-6w", "word_sorting@short", "spell_backward@3-5", "base_conversion@le100",
     "number_sorting@small", "count_primes@le100", "word_sequence_reversal@short", "caesar_cipher@short",
     "ab@4", "sentence_reordering@short", "binary_alternation@short",
     "palindrome_generation@short", "letter_jumble@short", "isomorphic_strings", "ransom_note",
     "base_conversion@hex-le255", "game_of_life_halting", "string_insertion", "letter_counting", "number_sorting",
     "word_sequence_reversal", "count_primes", "spell_backward", "word_sorting", "caesar_cipher",
     "sentence_reordering", "binary_alternation", "letter_jumble", "group_anagrams@small"),
    ("maze@small", "tsumego@9x9", "maze", "countdown@small"),
    ("color_cube_rotation@1rot", "number_sequence@short", "color_cube_rotation", "figlet_font",
     "rectangle_count@small"),
    ("course_schedule@small", "largest_island@small", "shortest_path@small", "path_star@small",
     "largest_island", "quantum_lock"),
    ("bf",),
    ("list_functions",),
)
RG_HUB_TASKS: tuple[str, ...] = tuple(
    f"rg/{t}" for row in itertools.zip_longest(*_RG_BY_CATEGORY) for t in row if t)


def _to_fp16(adapter_dir: Path) -> None:
    """Store factors in float16 (half the size; the engine computes in float32)."""
    path = adapter_dir / ADAPTER_WEIGHTS
    tensors = {k: v.to(torch.float16).contiguous() for k, v in load_file(path).items()}
    save_file(tensors, path, metadata={"format": "pt"})


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def trained_style(task: str, examples=None) -> str:
    """How `task`'s examples are answered in training today: "text", "letter" or "" (generative);
    from `examples` (a user's own task) when given, else from the task's source."""
    if examples is not None:
        styles = Counter(e.answer_style for e in examples)
        style = styles.most_common(1)[0][0] if styles else ""
    else:
        style = task_data.answer_style(task)
    return "letter" if style == "letter-label" else style


def examples_dir_tasks(folder: Path) -> dict[str, list]:
    """A user's own tasks for `hub build --examples-dir`: one module per `NAME.jsonl` (the
    examples format of `adapt`), named NAME. No BIG-bench needed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--examples-dir {folder}: no such folder")
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise ValueError(f"--examples-dir {folder}: no NAME.jsonl files in it (one per task)")
    return {f.stem: load_jsonl(f) for f in files}


@dataclass
class TrainedModule:
    """One module's outcome, as plain data (it travels back from a Ray actor on another node):
    the PEFT folder's files, or the reason the task was skipped."""

    task: str
    files: dict[str, bytes] | None = None
    stats: dict | None = None
    skipped: str | None = None


def train_module(net, tok, task: str, cfg: TrainConfig, progress=None,
                 examples=None) -> TrainedModule:
    """Train `task`'s LoRA on `net` (restored afterwards) on `examples` (default: all of the
    task's); factors stored in float16."""
    import tempfile

    exs = task_data.load_task(task) if examples is None else examples
    generic = task_data.load_task(task, generic=True) if cfg.generic_share > 0 and examples is None else None
    with tempfile.TemporaryDirectory(prefix="lorahub-module-") as tmp:
        out = Path(tmp) / module_name(task)
        t0 = time.time()
        try:
            stats = train_lora(net, tok, exs, out, cfg, progress=progress, generic=generic)
        except ValueError as e:  # too few usable examples for this context length
            return TrainedModule(task, skipped=str(e))
        _to_fp16(out)
        files = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()}
    return TrainedModule(task, files=files, stats={**stats, "seconds": round(time.time() - t0, 1)})


def record_module(hub_dir: Path, manifest: dict, mod: TrainedModule, cfg: TrainConfig,
                  examples=None) -> dict:
    """Write a trained module's folder (atomically) and its `hub.json` entry; returns the entry.
    `examples`: the user's own examples it was trained on (`--examples-dir`), else BIG-bench's."""
    name = module_name(mod.task)
    with atomic_dir(hub_dir / "modules" / name) as tmp:
        for fname, data in mod.files.items():
            (tmp / fname).write_bytes(data)
    out = hub_dir / "modules" / name
    entry = {
        "name": name, "path": f"modules/{name}", "source_task": mod.task,
        "sha256": sha256_file(out / ADAPTER_WEIGHTS), "rank": cfg.rank, "alpha": cfg.alpha,
        "target_modules": list(cfg.target_modules), "steps": cfg.steps, "lr": cfg.lr, "max_length": cfg.max_length,
        "final_loss": round(mod.stats["final_loss"], 4), "train_examples": mod.stats["examples"],
        "heldout_loss": _round(mod.stats.get("heldout_loss")), "heldout_examples": mod.stats.get("heldout_examples", 0),
        "heldout_accuracy": _round(mod.stats.get("heldout_accuracy")),
        "heldout_metric": mod.stats.get("heldout_metric"), "train_dtype": cfg.dtype,
        "answer_style": trained_style(mod.task, examples), "seconds": mod.stats["seconds"],
        "task_source": "examples" if examples is not None else task_data.source_of(mod.task),
    }
    if examples is None:  # where the task came from: source, version, config, seed
        entry["provenance"] = task_data.provenance(mod.task)
    if cfg.generic_share > 0:  # format-robust training (`hub build --format-robust`)
        entry.update(generic_share=cfg.generic_share, generic_rows=mod.stats.get("generic_rows", 0))
    manifest["modules"] = [m for m in manifest["modules"] if m["name"] != name] + [entry]
    write_hub_json(hub_dir, manifest)
    return entry


@dataclass
class BuildPlan:
    """What is left to train. Explicit `--tasks`: each one not yet present. Default: the curated
    list in order until the hub holds `target` modules (a task that turns out unusable, e.g. all
    its inputs are longer than `--max-length`, is skipped and the next one takes its place)."""

    candidates: list[str]
    target: int  # modules the hub should hold when done

    @classmethod
    def make(cls, tasks: list[str] | None, n_modules: int, done: set[str]) -> BuildPlan:
        if tasks:
            for t in tasks:
                task_data.refuse_for_training(t)
            unknown = [t for t in tasks if not task_data.exists(t)]
            if unknown:
                raise ValueError(f"unknown tasks {unknown}; see `lorahub-serve data list`")
            todo = [t for t in tasks if t not in done]
            return cls(todo, len(done) + len(todo))
        if n_modules > len(DEFAULT_HUB_TASKS):
            raise ValueError(f"--modules {n_modules}: the curated list has {len(DEFAULT_HUB_TASKS)} tasks; "
                             "name more with --tasks (see `lorahub-serve data list`)")
        return cls([t for t in DEFAULT_HUB_TASKS if t not in done], max(n_modules, len(done)))


def build_hub(model: str, hub_dir: Path, tasks: list[str] | None = None, n_modules: int = 32,
              cfg: TrainConfig | None = None, log=print,
              trainers: Callable[[], AbstractContextManager] | None = None,
              own_examples: dict[str, list] | None = None) -> dict:
    """Train the missing modules into `hub_dir`, writing each module as soon as it is done.

    own_examples: the user's own tasks, name -> examples (`--examples-dir`): one module each,
    instead of BIG-bench tasks.

    trainers: makes the trainer pool, a context manager yielding an object with the interface
    of `LocalTrainers` (e.g. `functools.partial(cluster.hub_trainers.trainer_pool, model, 4)`);
    called only when something is left to train. None: train in this process.
    """
    from tqdm import tqdm

    cfg = cfg or TrainConfig()
    hub_dir = Path(hub_dir)
    manifest = read_hub_json(hub_dir, missing_ok=True)
    manifest.update({"format": HUB_FORMAT, "base_model": str(model)})
    done = {m["source_task"] for m in manifest["modules"] if (hub_dir / m["path"] / ADAPTER_WEIGHTS).exists()}
    if own_examples:
        if tasks:
            raise ValueError("--examples-dir trains your own tasks: leave out --tasks and --broad")
        todo = [t for t in own_examples if t not in done]
        plan = BuildPlan(todo, len(done) + len(todo))
    else:
        plan = BuildPlan.make(tasks, n_modules, done)
    missing = plan.target - len(done)
    if missing <= 0:
        log(f"[hub] {len(done)} modules present, 0 to train into {hub_dir}")
        return manifest
    bar = tqdm(total=missing, desc="hub build", unit="module")

    def on_result(mod: TrainedModule) -> bool:
        if mod.skipped:
            log(f"[hub] skipped {mod.task}: {mod.skipped}")
            return False
        entry = record_module(hub_dir, manifest, mod, cfg, (own_examples or {}).get(mod.task))
        bar.update(1)
        bar.set_postfix(task=mod.task[:24], loss=f"{entry['final_loss']:.3f}")
        log(f"[hub] {mod.task}: loss {mod.stats['first_loss']:.3f} -> {mod.stats['final_loss']:.3f} "
            f"in {entry['seconds']} s")
        return True

    def on_step(task: str, step: int, steps: int, loss: float) -> None:
        bar.set_postfix(task=task[:24], step=f"{step}/{steps}", loss=f"{loss:.3f}")

    make_pool = trainers or (lambda: contextlib.nullcontext(LocalTrainers(model, on_step)))
    try:
        with make_pool() as pool:
            log(f"[hub] {len(done)} modules present, {missing} to train into {hub_dir} ({pool.where})")
            trained = train_modules(pool, plan.candidates, missing, cfg, on_result, own_examples)
    finally:
        bar.close()
    trained += len(done)
    if trained < plan.target:
        log(f"[hub] {trained} of {plan.target} modules: the task list ran out of usable tasks")
    return manifest


@dataclass
class TrainWork:
    """One module to train; `attempts` counts the workers lost running it (a Ray pool's retries)."""

    task: str
    cfg: TrainConfig
    attempts: int = 0
    examples: list | None = None  # the user's own (`--examples-dir`); None: the BIG-bench task's


def train_modules(pool, candidates: list[str], missing: int, cfg: TrainConfig,
                  on_result: Callable[[TrainedModule], bool],
                  own_examples: dict[str, list] | None = None) -> int:
    """Train candidates in order on `pool` until `missing` modules are recorded.

    `on_result(TrainedModule) -> bool` (True: recorded) runs here as each module finishes; a
    module whose training raised is reported as skipped. Returns the modules recorded.
    """
    queue, running, recorded = list(candidates), 0, 0
    while running or (queue and recorded + running < missing):
        while pool.free() > 0 and queue and recorded + running < missing:
            task = queue.pop(0)
            pool.submit(TrainWork(task, cfg, examples=(own_examples or {}).get(task)))
            running += 1
        finished = pool.wait()
        if not finished:
            raise RuntimeError("hub build: modules are training but the pool returned none")
        for work, outcome in finished:
            running -= 1
            if isinstance(outcome, BaseException):
                first = (str(outcome).splitlines() or [type(outcome).__name__])[0]
                outcome = TrainedModule(work.task, skipped=f"training failed: {first}")
            recorded += on_result(outcome)
    return recorded


class LocalTrainers(InlinePool):
    """The trainer pool of one: trains in this process when `wait()` is called (the pool
    interface of `work_pool`); an exception in training propagates."""

    where = "in this process"

    def __init__(self, model: str, on_step: Callable[[str, int, int, float], None] | None = None):
        super().__init__(self._train, catch=False)
        self.model, self.on_step = model, on_step
        self.net = self.tok = None

    def _train(self, work: TrainWork) -> TrainedModule:
        if self.net is None:
            from lorahub_serve.models import load_base, resolve_model

            torch.set_num_threads(max(1, torch.get_num_threads()))
            self.net, self.tok = load_base(resolve_model(self.model))
        step = None if self.on_step is None else (
            lambda s, n, loss: self.on_step(work.task, s, n, loss))
        try:
            return train_module(self.net, self.tok, work.task, work.cfg, progress=step, examples=work.examples)
        finally:
            _release_freed_memory()


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS between modules. A long in-process build (bf16
    autocast, batches of every length) grew from 2 to 6.7 GB RSS over 8 modules (2026-12-07):
    glibc keeps freed pages of a fragmented heap unless asked."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to hand back this way
        pass
