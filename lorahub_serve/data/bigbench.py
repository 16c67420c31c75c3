"""BIG-bench tasks read straight from the `bigbench==1.0.0` sdist tarball (never pip-installed).

Where the files come from: `$LORAHUB_BIGBENCH` (a copy of the sdist, or a folder of task folders
such as a BIG-bench checkout's `bigbench/benchmark_tasks`) when set, else the sdist downloaded once
from PyPI into the cache. PyPI stopped serving 1.0.0 (seen 2026-12-07): without a copy, loading a
task raises `BigBenchUnavailable`, which says how to supply one.

A task is addressed by its folder below `bigbench/benchmark_tasks/`, e.g. `navigate` or
`logical_deduction/three_objects`. Multiple-choice examples show their options in a seeded
random order ("(A) ...") because some files list the correct answer first.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import tarfile
from pathlib import Path

from lorahub_serve import paths
from lorahub_serve.data.examples import LETTERS, Example, TaskInfo
from lorahub_serve.errors import LorahubError

SDIST_FILE = "bigbench-1.0.0.tar.gz"
PYPI_SIMPLE = "https://pypi.org/simple/bigbench/"  # PyPI's JSON simple API (PEP 691)
_TASK_DIR = "bigbench/benchmark_tasks/"
SOURCE_ENV = "LORAHUB_BIGBENCH"  # a copy of the sdist, or a folder of task folders


class BigBenchUnavailable(LorahubError, RuntimeError):
    """The task data cannot be had: PyPI no longer serves the sdist, or the network is down."""


def _how_to_supply() -> str:
    return (f"Set {SOURCE_ENV} to a copy of {SDIST_FILE} or to a folder of BIG-bench task "
            f"folders (a BIG-bench checkout's bigbench/benchmark_tasks), or copy the sdist into the cache "
            f"with `lorahub-serve data fetch --from PATH`")


def sdist_path(download: bool = True) -> Path:
    """The cached sdist tarball; downloaded once from PyPI (358 MB)."""
    dl = paths.downloads_dir() / "bigbench"
    target = dl / SDIST_FILE
    if target.exists():
        return target
    if not download:
        raise FileNotFoundError(f"BIG-bench sdist not in {dl}; run `lorahub-serve data fetch`")
    _download_sdist(target)
    return target


def _download_sdist(target: Path) -> None:
    """Fetch the sdist file itself from PyPI, checked against PyPI's sha256.

    Not `pip download`: a current pip builds the sdist's metadata, and bigbench declares a
    direct-URL dependency that pip then refuses. We only need the file.
    """
    import urllib.error
    import urllib.request

    from tqdm.auto import tqdm

    index = urllib.request.Request(PYPI_SIMPLE, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(index, timeout=60) as r:
            files = json.load(r)["files"]
    except (urllib.error.URLError, OSError) as e:
        raise BigBenchUnavailable(f"cannot reach {PYPI_SIMPLE} for {SDIST_FILE} ({e}). {_how_to_supply()}") from e
    entry = next((f for f in files if f["filename"] == SDIST_FILE), None)
    if entry is None:
        # Seen 2026-12-07: PyPI lists only bigbench 0.0.1 (the API code, no task files).
        listed = ", ".join(sorted(f["filename"] for f in files)) or "nothing"
        raise BigBenchUnavailable(f"PyPI no longer serves {SDIST_FILE} ({PYPI_SIMPLE} lists {listed}, "
                                  f"which hold no task files). {_how_to_supply()}")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_suffix(".part")
    digest = hashlib.sha256()
    with urllib.request.urlopen(entry["url"], timeout=120) as r, open(part, "wb") as f, tqdm(
        total=entry.get("size"), unit="B", unit_scale=True, desc=f"download {SDIST_FILE}"
    ) as bar:
        while chunk := r.read(1 << 20):
            f.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
    if digest.hexdigest() != entry["hashes"]["sha256"]:
        part.unlink()
        raise RuntimeError(f"{SDIST_FILE}: sha256 mismatch with PyPI; download again")
    part.rename(target)


def store_sdist(source: Path) -> Path:
    """Copy a BIG-bench sdist from elsewhere into the cache (`data fetch --from`), after checking
    that it holds task files."""
    import shutil

    source = Path(source).expanduser()
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such file")
    if _count_tasks_in_tarball(source) == 0:
        raise ValueError(f"{source} holds no {_TASK_DIR}*/task.json: not a BIG-bench sdist")
    target = paths.downloads_dir() / "bigbench" / SDIST_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target.with_suffix(".part"))
    target.with_suffix(".part").rename(target)
    done = target.parent / "tasks" / ".complete"
    done.unlink(missing_ok=True)  # re-extract from the new copy
    clear_caches()
    return target


def _task_member(m: tarfile.TarInfo) -> str | None:
    """A task file's path below `benchmark_tasks/` (e.g. `navigate/task.json`), else None."""
    name = m.name.split("/", 1)[1] if "/" in m.name else m.name  # drop "bigbench-1.0.0/"
    if m.isfile() and name.startswith(_TASK_DIR) and name.endswith("/task.json"):
        return name[len(_TASK_DIR):]
    return None


def _count_tasks_in_tarball(path: Path) -> int:
    with tarfile.open(path) as tf:
        return sum(1 for m in tf if _task_member(m))


def _extract(tarball: Path, out: Path) -> Path:
    """Every task.json of an sdist, extracted once (one pass, ~10 s) into `out`."""
    done = out / ".complete"
    if done.exists():
        return out
    with tarfile.open(tarball) as tf:
        for m in tf:
            if rel := _task_member(m):
                dest = out / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tf.extractfile(m).read())
    done.touch()
    return out


def _task_folder(folder: Path) -> Path:
    """The folder whose sub-folders are tasks, given a checkout root, its bigbench/ or the folder itself."""
    for cand in (folder / _TASK_DIR, folder / "benchmark_tasks", folder):
        if cand.is_dir() and (any(cand.glob("*/task.json")) or any(cand.glob("*/*/task.json"))):
            return cand
    raise BigBenchUnavailable(f"{SOURCE_ENV}={folder}: no task.json below it (want <task>/task.json)")


def _extracted_dir() -> Path:
    """The folder of task folders: ${SOURCE_ENV} when set, else the cache's extraction of the sdist."""
    source = os.environ.get(SOURCE_ENV)
    if source:
        src = Path(source).expanduser()
        if src.is_dir():
            return _task_folder(src)
        if src.is_file():
            key = hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:12]
            return _extract(src, paths.downloads_dir() / "bigbench" / f"tasks-{key}")
        raise BigBenchUnavailable(f"{SOURCE_ENV}={source}: no such file or folder")
    out = paths.downloads_dir() / "bigbench" / "tasks"
    if (out / ".complete").exists():
        return out
    return _extract(sdist_path(), out)


def use_source(path: Path | str) -> None:
    """Read tasks from `path` from now on (this process and its children): sets ${SOURCE_ENV}."""
    os.environ[SOURCE_ENV] = str(path)
    clear_caches()


def clear_caches() -> None:
    """Forget what was read (task index, files, answer styles): the source has changed."""
    _index.cache_clear()
    read_task_json.cache_clear()
    answer_style.cache_clear()


def source() -> str:
    """Where the task data comes from, for reports."""
    return os.environ.get(SOURCE_ENV) or str(paths.downloads_dir() / "bigbench" / SDIST_FILE)


@functools.lru_cache(maxsize=1)
def _index() -> dict[str, Path]:
    """task name -> its extracted task.json."""
    root = _extracted_dir()
    return {str(p.parent.relative_to(root)): p for p in root.rglob("task.json")}


def list_tasks() -> list[str]:
    """All JSON tasks and subtasks (e.g. `navigate`, `logical_deduction/three_objects`)."""
    return sorted(_index())


@functools.lru_cache(maxsize=256)
def read_task_json(task: str) -> dict:
    index = _index()
    if task not in index:
        raise KeyError(f"unknown BIG-bench task {task!r}; `lorahub-serve data list` shows the {len(index)} tasks")
    return json.loads(index[task].read_text(encoding="utf-8"))


def _clean_prefix(text: str | None, default: str) -> str:
    return default if text is None else text.lstrip("\n")


# A task answers with its labels' text (BBH-style "yes", "valid", "True") when every example offers
# the same small label set; larger fixed sets (salient_translation's six error types) and options
# that change per example are answered by letter, as BBH does.
MAX_WORD_LABELS = 4


@functools.lru_cache(maxsize=512)
def answer_style(task: str) -> str:
    """"text", "letter" or "letter-label" (the labels are themselves letters, a/b or (a)/(b), and
    name options written into the input, as in hyperbaton and snarks); "" for generative tasks."""
    sets = {frozenset(e["target_scores"]) for e in read_task_json(task).get("examples", [])
            if e.get("target_scores")}
    if not sets:
        return ""
    if min(len(s) for s in sets) > len(LETTERS):  # too many options to letter (dyck_languages)
        return "text"
    if len(sets) == 1:
        labels = next(iter(sets))
        as_letters = {lab.strip("()").upper() for lab in labels}
        if as_letters == set(LETTERS[: len(labels)]) and all(len(lab.strip("()")) == 1 for lab in labels):
            return "letter-label"
        if len(labels) <= MAX_WORD_LABELS:
            return "text"
    return "letter"


def format_example(raw: dict, spec: dict, task: str, index: int, seed: int = 0,
                   generic: bool = False) -> Example | None:
    """One BIG-bench example as (prompt, answer); None when it has no usable target.

    The task's own input/output prefixes frame the prompt (its natural format); `generic` uses
    the generic `Q: …\nA:` frame instead (format-robust training), the rest unchanged.

    Multiple choice, options in a seeded random order (some files list the answer first):
    - text: `Q: …\nOptions: implausible, plausible\nA:` -> " plausible";
    - letter: `Q: …\nOptions:\n(A) …\n(B) …\nA:` -> " (B)";
    - letter-label: the input names its options a/b: `Q: …\nOptions: (A), (B)\nA:` -> " (A)".
    Options are shown for every multiple-choice task, also where the file sets
    append_choices_to_input=false, as BBH does.
    """
    q_prefix = "Q: " if generic else _clean_prefix(spec.get("example_input_prefix"), "Q: ")
    a_prefix = "A:" if generic else _clean_prefix(spec.get("example_output_prefix"), "A:").rstrip()
    task_prefix = spec.get("task_prefix", "") or ""
    if task_prefix and not task_prefix[-1].isspace():
        task_prefix += "\n"
    text = str(raw.get("input", "")).strip()
    head = f"{task_prefix}{q_prefix}{text}"
    scores = raw.get("target_scores")
    if scores:
        style = answer_style(task)
        if style == "letter-label":
            labels = sorted(scores, key=lambda lab: lab.strip("()").upper())  # bound to the input: no shuffle
            best = max(labels, key=lambda lab: scores[lab])
            opts = tuple(f"({lab.strip('()').upper()})" for lab in labels)
            return Example(f"{head}\nOptions: {', '.join(opts)}\n{a_prefix}", f" {opts[labels.index(best)]}",
                           opts, "letter")
        options = list(scores)
        rng = random.Random(f"{task}:{index}:{seed}")  # str seeds are stable across runs
        rng.shuffle(options)
        best = max(options, key=lambda o: scores[o])
        if style == "text" or len(options) > len(LETTERS):  # the odd example with 34 options: text
            listed = f"\nOptions: {', '.join(options)}" if len(options) <= MAX_WORD_LABELS else ""
            return Example(f"{head}{listed}\n{a_prefix}", f" {best}", tuple(options), "text")
        opts = "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))
        return Example(f"{head}\nOptions:\n{opts}\n{a_prefix}", f" ({LETTERS[options.index(best)]})",
                       tuple(options), "letter")
    target = raw.get("target")
    if isinstance(target, list):
        target = target[0] if target else None
    if target is None or not str(target).strip():
        return None
    target = str(target).strip()
    if task in DIGIT_TARGETS:
        target = number_as_digits(target)
    return Example(f"{head}\n{a_prefix}", " " + target)


def load_task(task: str, seed: int = 0, generic: bool = False) -> list[Example]:
    """Every usable example of a task, options in seeded random order (`generic`: in the generic
    `Q: …\nA:` frame; the same examples in the same order as the natural format's)."""
    spec = read_task_json(task)
    out = []
    for i, raw in enumerate(spec.get("examples", [])):
        ex = format_example(raw, spec, task, i, seed, generic)
        if ex is not None:
            out.append(ex)
    return out


def task_info(task: str) -> TaskInfo:
    spec = read_task_json(task)
    exs = spec.get("examples", [])
    mc = [e for e in exs if e.get("target_scores")]
    if mc:
        n_opts = round(sum(len(e["target_scores"]) for e in mc) / len(mc))
        return TaskInfo(task, "multiple_choice", len(exs), n_opts)
    return TaskInfo(task, "generative", len(exs), 0)


# BIG-bench spells these tasks' counts as words ("twelve"); BBH, and the model, write digits ("12").
DIGIT_TARGETS = frozenset({"object_counting"})
_UNITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
          "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50}


def number_as_digits(text: str) -> str:
    """"twelve" -> "12", "twenty-one" -> "21" (0-59); anything else unchanged."""
    word = text.strip().lower()
    if word in _UNITS:
        return str(_UNITS.index(word))
    tens, _, unit = word.partition("-")
    if tens in _TENS and (not unit or unit in _UNITS[1:10]):
        return str(_TENS[tens] + (_UNITS.index(unit) if unit else 0))
    return text


def normalize_answer(text: str) -> str:
    """The reference's exact-match normalisation: lowercase, strip, drop a trailing period; and a
    number spelt as a word reads as its digits ("Twelve." and "12" are the same answer)."""
    text = text.strip().lower()
    text = text[:-1].strip() if text.endswith(".") else text
    return number_as_digits(text)
