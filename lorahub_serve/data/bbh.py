"""The Big-Bench Hard families that ship as BIG-bench JSON: held out, never trained on."""

from __future__ import annotations

BBH_FAMILIES: tuple[str, ...] = (
    "causal_judgment", "date_understanding", "disambiguation_qa", "dyck_languages",
    "formal_fallacies_syllogisms_negation", "geometric_shapes", "hyperbaton", "logical_deduction",
    "movie_recommendation", "navigate", "object_counting", "penguins_in_a_table",
    "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection",
    "snarks", "sports_understanding", "temporal_sequences", "tracking_shuffled_objects",
    "word_sorting",
)

# The evaluation units: families with subtasks are evaluated per subtask, as BBH does.
BBH_TASKS: tuple[str, ...] = tuple(
    t
    for fam in BBH_FAMILIES
    for t in (
        [f"{fam}/{n}_objects" for n in ("three", "five", "seven")]
        if fam in ("logical_deduction", "tracking_shuffled_objects")
        else [fam]
    )
)


def is_bbh(task: str) -> bool:
    """True for a BBH family or any of its subtasks."""
    return task.split("/")[0] in BBH_FAMILIES


def refuse_bbh(task: str, what: str = "training") -> None:
    if is_bbh(task):
        raise ValueError(
            f"task {task!r} belongs to the held-out Big-Bench Hard family {task.split('/')[0]!r}; "
            f"it is used for evaluation only and is refused for {what}"
        )
