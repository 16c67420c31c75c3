"""reasoning-gym tasks (`rg/<dataset>`, `rg/<dataset>@<config>`): procedural generators from PyPI
(`reasoning-gym`, Apache-2.0) that work offline.

What makes them usable as a fixed benchmark here:
- every task is generated in a child process with `PYTHONHASHSEED=0` and the global `random`
  seeded: some generators iterate over sets (isomorphic_strings, ransom_note, word_ladder, ...)
  and `list_functions` calls the global `random`, so in-process generation differs between runs;
- each item has a time limit (`ITEM_SECONDS`; number_sequence stalls for ~13 s on some seeds);
- questions are deduplicated, answers must be one line (the model answers with its first line);
- the result is cached as JSONL under the cache root, so a task reads the same everywhere;
- generators with no reference answer (`answer=None`) are refused with the reason.
Prompt: `Q: {question}\nA:` -> ` {answer}`; the metric is exact match after the project's
normalisation, with the generator's own `score_answer` available beside it (`native_score`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from lorahub_serve import paths
from lorahub_serve.data.examples import Example
from lorahub_serve.data.rg_configs import CONFIGS, config_params
from lorahub_serve.errors import LorahubError

VERSION = "0.1.25"  # pinned in pyproject.toml; part of every cache key and provenance
DATA_SEED = 7  # one generation seed per task: the evaluation set never changes with search seeds
DEFAULT_SIZE = 1500  # items asked of the generator (before deduplication)
ITEM_SECONDS = 2.0
MAX_ANSWER_CHARS = 80
NO_ANSWER = frozenset({"boxnet", "graph_color", "propositional_logic", "rubiks_cube", "rush_hour"})
NEEDS_OTHERS = frozenset({"composite"})  # a mixture of other datasets, not one task
# Reserved for an independent check: never trained on, in a suite, tuned, evaluated or used as shots.
RESERVED = frozenset({"chain_sum", "family_relationships", "aiw"})


class TaskSourceError(LorahubError, ValueError):
    """A reasoning-gym task name that cannot be generated; the message says why."""


def parse(name: str) -> tuple[str, str | None]:
    """`rg/gcd@le60` -> ("gcd", "le60"); `rg/gcd` -> ("gcd", None)."""
    body = name.removeprefix("rg/")
    dataset, _, config = body.partition("@")
    return dataset, (config or None)


@functools.lru_cache(maxsize=1)
def datasets() -> dict[str, str]:
    """dataset name -> its category (the reasoning-gym package folder it lives in); built once,
    as `closeness` asks it for every hub module of every candidate."""
    try:
        from reasoning_gym.factory import DATASETS
    except ImportError as e:
        raise TaskSourceError(f"reasoning-gym {VERSION} cannot be imported here ({e}); `make setup` installs "
                              f"it (a task already generated reads from the cache without it)") from None

    return {n: cls.__module__.split(".")[1] for n, (cls, _) in sorted(DATASETS.items())}


def category(name: str) -> str:
    dataset, _ = parse(name)
    return datasets()[dataset]


def check_usable(name: str) -> tuple[str, str | None]:
    """(dataset, config) of a task that can be generated and scored, else `TaskSourceError`."""
    dataset, config = parse(name)
    known = datasets()
    if dataset not in known:
        raise TaskSourceError(f"{name}: reasoning-gym {VERSION} has no dataset {dataset!r} "
                              f"(`lorahub-serve data list --source rg` lists them)")
    if dataset in NO_ANSWER:
        raise TaskSourceError(f"{name}: the {dataset} generator gives no reference answer "
                              "(answer=None), so it can be neither trained on nor scored by exact match")
    if dataset in NEEDS_OTHERS:
        raise TaskSourceError(f"{name}: {dataset} mixes other datasets; name those instead")
    try:
        config_params(dataset, config)
    except KeyError as e:
        raise TaskSourceError(str(e.args[0])) from None
    return dataset, config


def list_tasks() -> list[str]:
    """Every usable dataset at its defaults, and every named config."""
    out = []
    for dataset in datasets():
        if dataset in NO_ANSWER or dataset in NEEDS_OTHERS:
            continue
        out.append(f"rg/{dataset}")
        out += [f"rg/{dataset}@{c}" for c in CONFIGS.get(dataset, {})]
    return out


def provenance(name: str, size: int = DEFAULT_SIZE) -> dict:
    dataset, config = check_usable(name)
    return {"source": "reasoning-gym", "version": VERSION, "dataset": dataset,
            "category": category(name), "config": config or "default",
            "params": _jsonable(config_params(dataset, config)), "seed": DATA_SEED, "size": size}


def _jsonable(params: dict) -> dict:
    return json.loads(json.dumps(params, default=str))


def _cache_file(dataset: str, config: str | None, size: int) -> Path:
    key = json.dumps([VERSION, dataset, _jsonable(config_params(dataset, config)), DATA_SEED, size,
                      ITEM_SECONDS, MAX_ANSWER_CHARS], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return paths.downloads_dir() / "reasoning_gym" / f"{dataset}@{config or 'default'}-{digest}.jsonl"


@functools.lru_cache(maxsize=256)
def items(name: str, size: int = DEFAULT_SIZE) -> tuple[dict, ...]:
    """The task's generated items ({"question", "answer", "metadata"}), deduplicated, in order.
    A cached task reads without reasoning-gym itself (machines that only run benchmarks)."""
    dataset, config = parse(name)
    try:
        cache = _cache_file(dataset, config, size)
    except KeyError as e:
        raise TaskSourceError(str(e.args[0])) from None
    if not cache.exists():
        check_usable(name)
        _generate_in_child(dataset, config, size, cache)
    return tuple(json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines())


def _generate_in_child(dataset: str, config: str | None, size: int, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, "-m", "lorahub_serve.data.rg", dataset, config or "", str(size), str(out)]
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise TaskSourceError(f"rg/{dataset}@{config or 'default'}: generation failed: {last}")


def load_task(name: str) -> list[Example]:
    return [Example(f"Q: {it['question'].strip()}\nA:", f" {it['answer']}") for it in items(name)]


def native_score(name: str, question_prompt: str, prediction: str) -> float | None:
    """The generator's own `score_answer` of `prediction` for the item whose prompt is
    `question_prompt` (None when the item is not one of the task's)."""
    item = _items_by_prompt(name).get(question_prompt)
    if item is None:
        return None
    return float(_scorer(*parse(name)).score_answer(prediction.strip(), item))


@functools.lru_cache(maxsize=64)
def _items_by_prompt(name: str) -> dict[str, dict]:
    return {f"Q: {it['question'].strip()}\nA:": it for it in items(name)}


@functools.lru_cache(maxsize=64)
def _scorer(dataset: str, config: str | None):
    import reasoning_gym

    return reasoning_gym.create_dataset(dataset, size=1, seed=DATA_SEED, **config_params(dataset, config))


def _generate(dataset: str, config: str | None, size: int, out: Path) -> None:
    """Child process: generate, time-limit, deduplicate and write `out` atomically."""
    import random
    import signal

    import reasoning_gym

    class _Stalled(Exception):
        pass

    def _alarm(*_):
        raise _Stalled

    random.seed(DATA_SEED)  # list_functions draws from the global generator
    ds = reasoning_gym.create_dataset(dataset, size=size, seed=DATA_SEED, **config_params(dataset, config))
    signal.signal(signal.SIGALRM, _alarm)
    seen, kept, skipped = set(), [], {"stalled": 0, "failed": 0, "repeated": 0, "unfit_answer": 0}
    for i in range(size):
        signal.setitimer(signal.ITIMER_REAL, ITEM_SECONDS)
        try:
            it = ds[i]
        except _Stalled:
            skipped["stalled"] += 1
            continue
        except Exception:  # noqa: BLE001 - some generators give up on some seeds ("no suitable cell")
            skipped["failed"] += 1
            continue
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        answer = it["answer"]
        if answer is None:
            raise SystemExit(f"{dataset}: item {i} has no answer")
        answer = str(answer).strip()
        if not answer or "\n" in answer or len(answer) > MAX_ANSWER_CHARS:
            skipped["unfit_answer"] += 1
            continue
        q = it["question"].strip()
        if q in seen:
            skipped["repeated"] += 1
            continue
        seen.add(q)
        kept.append({"question": q, "answer": answer, "metadata": it.get("metadata", {})})
    if len(kept) < 50:  # small spaces are fine (products of 1-digit numbers: 100); fewer is not a task
        raise SystemExit(f"{dataset}: only {len(kept)} usable items of {size} ({skipped})")
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(k, default=str) + "\n" for k in kept)
    tmp.replace(out)
    print(json.dumps({"kept": len(kept), **skipped}))


if __name__ == "__main__":
    _dataset, _config, _size, _out = sys.argv[1:5]
    _generate(_dataset, _config or None, int(_size), Path(_out))
