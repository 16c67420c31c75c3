"""One task interface over every source: a task name resolves to its examples in the project's
prompt format, a fixed evaluation split, its answer style and its provenance. Nothing outside
`lorahub_serve/data/` needs to know where a task comes from.

Names:
- `rg/<dataset>`, `rg/<dataset>@<config>`: reasoning-gym generators (PyPI, offline; `data/rg.py`);
- `bbh/<task>`: the official BIG-Bench Hard files (`data/bbh_official.py`), evaluation only;
- `bigbench/<task>`, or a bare BIG-bench name (the committed hubs and suites use those): BIG-bench
  from a copy named by `LORAHUB_BIGBENCH` (`data/bigbench.py`);
- a path to a `.jsonl` file of the user's own examples (`data/examples.py`).
"""

from __future__ import annotations

import random
from pathlib import Path

from lorahub_serve.data import bbh_official, bigbench, rg
from lorahub_serve.data.bbh import is_bbh as _is_bigbench_bbh
from lorahub_serve.data.examples import Example, TaskInfo, load_jsonl

SOURCES = {
    "rg": "reasoning-gym (PyPI, generated offline)",
    "bbh": "BIG-Bench Hard, the official files (evaluation only)",
    "bigbench": "BIG-bench, from a copy named by LORAHUB_BIGBENCH",
    "jsonl": "your own examples: a path to a .jsonl file",
}
# BIG-bench families kept for an independent check: their four hub modules stay, nothing else.
RESERVED_FAMILIES = ("color", "arithmetic", "bbq_lite_json", "unit_conversion")


class ReservedTask(ValueError):
    """A task kept for an independent check (or held out for evaluation) was asked for a use it
    is refused."""


def source_of(task: str) -> str:
    """The source key of a name (for provenance and `data list`; callers should not branch on it)."""
    if task.startswith("rg/"):
        return "rg"
    if task.startswith("bbh/"):
        return "bbh"
    if task.endswith(".jsonl"):
        return "jsonl"
    return "bigbench"


def _bigbench_name(task: str) -> str:
    return task.removeprefix("bigbench/")


def load_task(task: str, seed: int = 0, generic: bool = False) -> list[Example]:
    """Every usable example of `task` in prompt format. `seed` orders a BIG-bench task's options;
    `generic` frames BIG-bench prompts as `Q: …\\nA:` (the other sources already are)."""
    src = source_of(task)
    if src == "rg":
        return rg.load_task(task)
    if src == "bbh":
        return bbh_official.load_task(task.removeprefix("bbh/"))
    if src == "jsonl":
        return load_jsonl(Path(task))
    return bigbench.load_task(_bigbench_name(task), seed=seed, generic=generic)


def answer_style(task: str) -> str:
    """"text", "letter", "letter-label" (BIG-bench labels that are letters) or "" (generative)."""
    if source_of(task) == "bigbench":
        return bigbench.answer_style(_bigbench_name(task))
    styles = [e.answer_style for e in load_task(task)]
    return max(set(styles), key=styles.count) if styles else ""


def task_info(task: str) -> TaskInfo:
    if source_of(task) == "bigbench":
        i = bigbench.task_info(_bigbench_name(task))
        return TaskInfo(task, i.kind, i.n_examples, i.n_options)  # named as asked (bigbench/ prefix kept)
    exs = load_task(task)
    mc = [e for e in exs if e.options]
    if len(mc) * 2 > len(exs):
        return TaskInfo(task, "multiple_choice", len(exs), round(sum(len(e.options) for e in mc) / len(mc)))
    return TaskInfo(task, "generative", len(exs), 0)


def _evaluation_order(n: int) -> list[int]:
    """Example positions in the fixed order whose head is every task's evaluation set."""
    order = list(range(n))
    random.Random(0).shuffle(order)
    return order


def split(examples: list[Example], shots: int, n_eval: int | None, seed: int) -> tuple[list[Example], list[Example]]:
    """(few-shot, evaluation): the evaluation set is the first `n_eval` of a seed-0 shuffle, fixed
    across search seeds; the shots are drawn from the rest with `seed`, so they never overlap it
    (reasoning-gym questions are deduplicated at generation, so no question is in both)."""
    order = _evaluation_order(len(examples))
    n_eval = len(order) - shots if n_eval is None else min(n_eval, len(order) - shots)
    if n_eval < 0:
        raise ValueError(f"task has {len(examples)} examples, fewer than shots={shots}")
    eval_idx, pool = order[:n_eval], order[n_eval:]
    shot_idx = random.Random(seed).sample(pool, shots)
    return [examples[i] for i in shot_idx], [examples[i] for i in eval_idx]


def train_and_eval(task: str, n_eval: int) -> tuple[list[Example], list[Example]]:
    """(every example outside the evaluation set, the evaluation set) of `split` with `n_eval`:
    what an oracle may train on."""
    exs = load_task(task)
    order = _evaluation_order(len(exs))
    return [exs[i] for i in order[n_eval:]], [exs[i] for i in order[:n_eval]]


def list_tasks(source: str | None = None) -> list[str]:
    """Task names of one source, or of every source that is here (BIG-bench and BBH only when a
    copy is)."""
    out: list[str] = []
    if source in (None, "rg"):
        out += rg.list_tasks()
    if source in (None, "bbh"):
        try:
            bbh_official.folder()
            out += [f"bbh/{t}" for t in bbh_official.TASKS]
        except bbh_official.BbhUnavailable:
            if source == "bbh":
                raise
    if source in (None, "bigbench"):
        try:
            out += [f"bigbench/{t}" for t in bigbench.list_tasks()]
        except bigbench.BigBenchUnavailable:
            if source == "bigbench":
                raise
    return out


def exists(task: str) -> bool:
    """Whether `task` names a task of its source (BIG-bench: only when a copy is here)."""
    src = source_of(task)
    if src == "rg":
        try:
            rg.check_usable(task)
            return True
        except rg.TaskSourceError:
            return False
    if src == "bbh":
        return task.removeprefix("bbh/") in bbh_official.TASKS
    if src == "jsonl":
        return Path(task).is_file()
    try:
        return _bigbench_name(task) in set(bigbench.list_tasks())
    except bigbench.BigBenchUnavailable:
        return False


def bbh_tasks() -> tuple[str, ...]:
    """The official BBH tasks, `bbh/<task>` (the files need not be here to name them)."""
    return tuple(f"bbh/{t}" for t in bbh_official.TASKS)


def provenance(task: str) -> dict:
    src = source_of(task)
    if src == "rg":
        return rg.provenance(task)
    if src == "bbh":
        return {"source": "bbh", "task": task.removeprefix("bbh/"), "files": bbh_official.source()}
    if src == "jsonl":
        return {"source": "jsonl", "path": task}
    return {"source": "bigbench", "task": _bigbench_name(task), "files": bigbench.source()}


def kinship(task: str) -> tuple[str, str]:
    """(generator, category): what makes two tasks the same skill (`generator`: the reasoning-gym
    dataset or the BIG-bench family) or the same kind (`category`: reasoning-gym's category; a
    BIG-bench family is its own)."""
    src = source_of(task)
    if src == "rg":
        return rg.parse(task)[0], rg.category(task)
    name = task.removeprefix("bbh/") if src == "bbh" else _bigbench_name(task)
    fam = name.split("/")[0]
    return fam, fam


def is_eval_only(task: str) -> bool:
    """BBH, from its files or as BIG-bench families: held out for evaluation."""
    return source_of(task) == "bbh" or (source_of(task) == "bigbench" and _is_bigbench_bbh(_bigbench_name(task)))


def is_reserved(task: str) -> bool:
    src = source_of(task)
    if src == "rg":
        return rg.parse(task)[0] in rg.RESERVED
    return src == "bigbench" and _bigbench_name(task).split("/")[0] in RESERVED_FAMILIES


def refuse_reserved(task: str, what: str) -> None:
    """Raise `ReservedTask` for a task kept for an independent check (never trained on, put in a
    suite, tuned, evaluated or used as shots)."""
    if is_reserved(task):
        raise ReservedTask(f"{task}: reserved for an independent check; it is not used for {what}")


def refuse_for_training(task: str) -> None:
    """Refuse a task that must not train a module: reserved ones, and BBH (evaluation only)."""
    refuse_reserved(task, "hub training")
    if is_eval_only(task):
        raise ReservedTask(f"{task}: Big-Bench Hard is held out for evaluation and refused for hub training")


def native_score(task: str, prompt: str, prediction: str) -> float | None:
    """The source's own score of an answer, where it has one (reasoning-gym's `score_answer`)."""
    return rg.native_score(task, prompt, prediction) if source_of(task) == "rg" else None


def native_percent(task: str, examples, predictions) -> float | None:
    """Mean of the source's own score over aligned (example, prediction) pairs, in percent, beside
    exact match; None where the source has no scorer or an example is not one of the task's."""
    if source_of(task) != "rg":
        return None
    scores = [native_score(task, e.input, p) for e, p in zip(examples, predictions, strict=True)]
    return None if not scores or None in scores else 100.0 * sum(scores) / len(scores)
