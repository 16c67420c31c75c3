"""Few-shot examples (JSONL / lists) and BIG-bench tasks read from the PyPI sdist."""

from lorahub_serve.data.bbh import BBH_TASKS, is_bbh, refuse_bbh
from lorahub_serve.data.examples import (
    Example,
    ExampleError,
    from_records,
    load_examples,
    load_jsonl,
)

__all__ = [
    "BBH_TASKS",
    "Example",
    "ExampleError",
    "from_records",
    "is_bbh",
    "load_examples",
    "load_jsonl",
    "refuse_bbh",
]
