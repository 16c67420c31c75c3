"""BIG-Bench Hard from its official files (`bbh/<task>`): the 27 JSON files of
github.com/suzgunmirac/BIG-Bench-Hard (MIT), `{"examples": [{"input", "target"}]}`.

Where the files come from: `$LORAHUB_BBH` (a folder holding `<task>.json`) when set, else the
cache's copy made by `lorahub-serve data fetch bbh` (downloaded from upstream, or `--from DIR`).
BBH is held out for evaluation: never trained on.

Prompt `Q: {input}\nA:` -> ` {target}`, input and target as the benchmark gives them; the metric
is exact match (as in the LoraHub paper). For rank classification the examples also carry their
options: the `(A) ...` lines of the input (answered by letter) or the task's label set when its
targets take at most four values (Yes/No, True/False, valid/invalid).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
from pathlib import Path

from lorahub_serve import paths
from lorahub_serve.data.examples import LETTERS, Example
from lorahub_serve.errors import LorahubError

SOURCE_ENV = "LORAHUB_BBH"
UPSTREAM = "https://raw.githubusercontent.com/suzgunmirac/BIG-Bench-Hard/main/bbh/{task}.json"
TASKS: tuple[str, ...] = (
    "boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa",
    "dyck_languages", "formal_fallacies", "geometric_shapes", "hyperbaton",
    "logical_deduction_five_objects", "logical_deduction_seven_objects",
    "logical_deduction_three_objects", "movie_recommendation", "multistep_arithmetic_two",
    "navigate", "object_counting", "penguins_in_a_table", "reasoning_about_colored_objects",
    "ruin_names", "salient_translation_error_detection", "snarks", "sports_understanding",
    "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects",
    "web_of_lies", "word_sorting",
)
MAX_LABELS = 4
_OPTION_LINE = re.compile(r"^\(([A-R])\)\s*(.+)$", re.MULTILINE)


class BbhUnavailable(LorahubError, RuntimeError):
    """The official BBH files are not here; the message says how to get them."""


def _how_to() -> str:
    return (f"run `lorahub-serve data fetch bbh` (needs a network), or `data fetch bbh --from DIR` / "
            f"{SOURCE_ENV}=DIR with a copy of the 27 <task>.json files")


def _cache_dir() -> Path:
    return paths.downloads_dir() / "bbh"


def folder() -> Path:
    """The folder of `<task>.json` files, else `BbhUnavailable`."""
    named = os.environ.get(SOURCE_ENV)
    if named:
        path = Path(named).expanduser()
        if not (path / "navigate.json").is_file():
            raise BbhUnavailable(f"{SOURCE_ENV}={named}: no navigate.json there; {_how_to()}")
        return path
    if (_cache_dir() / ".complete").exists():
        return _cache_dir()
    raise BbhUnavailable(f"the BBH files are not in {_cache_dir()}; {_how_to()}")


def source() -> str:
    try:
        return str(folder())
    except BbhUnavailable:
        return "(not fetched)"


def fetch(from_dir: Path | None = None) -> Path:
    """Copy the 27 files into the cache, from `from_dir` or from upstream; returns the folder."""
    out = _cache_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / ".complete").unlink(missing_ok=True)
    for task in TASKS:
        target = out / f"{task}.json"
        if from_dir is not None:
            src = Path(from_dir).expanduser() / f"{task}.json"
            if not src.is_file():
                raise BbhUnavailable(f"--from {from_dir}: no {task}.json there (want the 27 BBH files)")
            _check(json.loads(src.read_text(encoding="utf-8")), src)
            shutil.copyfile(src, target)
        else:
            _download(task, target)
    (out / ".complete").touch()
    clear_caches()
    return out


def _download(task: str, target: Path) -> None:
    import urllib.error
    import urllib.request

    url = UPSTREAM.format(task=task)
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            data = r.read()
    except (urllib.error.URLError, OSError) as e:
        raise BbhUnavailable(f"cannot download {url} ({getattr(e, 'reason', e)}); {_how_to()}") from None
    _check(json.loads(data), url)
    target.write_bytes(data)


def _check(spec: dict, where) -> None:
    exs = spec.get("examples") if isinstance(spec, dict) else None
    if not exs or not all("input" in e and "target" in e for e in exs):
        raise BbhUnavailable(f"{where}: not a BBH file (want {{'examples': [{{'input', 'target'}}]}})")


def clear_caches() -> None:
    raw_examples.cache_clear()


@functools.lru_cache(maxsize=64)
def raw_examples(task: str) -> tuple[dict, ...]:
    if task not in TASKS:
        raise KeyError(f"bbh/{task}: not a BBH task; the 27 are {', '.join(TASKS)}")
    return tuple(json.loads((folder() / f"{task}.json").read_text(encoding="utf-8"))["examples"])


def _labels(task: str) -> tuple[str, ...]:
    targets = {e["target"].strip() for e in raw_examples(task)}
    return tuple(sorted(targets)) if len(targets) <= MAX_LABELS else ()


def to_example(raw: dict, labels: tuple[str, ...]) -> Example:
    text, target = raw["input"].strip(), raw["target"].strip()
    prompt = f"Q: {text}\nA:"
    lettered = dict(_OPTION_LINE.findall(text))
    letters = LETTERS[:len(lettered)]
    if lettered and "".join(sorted(lettered)) == letters and re.fullmatch(r"\([A-R]\)", target):
        return Example(prompt, f" {target}", tuple(lettered[c] for c in letters), "letter")
    if target in labels:
        return Example(prompt, f" {target}", labels, "text")
    return Example(prompt, f" {target}")


def load_task(task: str) -> list[Example]:
    labels = _labels(task)
    return [to_example(raw, labels) for raw in raw_examples(task)]
