"""Few-shot examples (JSONL / lists) and BIG-bench tasks read from the PyPI sdist."""

from .bbh import BBH_TASKS, is_bbh, refuse_bbh
from .examples import Example, ExampleError, load_examples, load_jsonl, from_records

__all__ = [
    "BBH_TASKS", "is_bbh", "refuse_bbh", "Example", "ExampleError", "load_examples", "load_jsonl",
    "from_records",
]
