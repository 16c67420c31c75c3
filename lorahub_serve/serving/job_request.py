"""The body of `POST /v1/adapters`: validated into an `AdaptRequest`, or refused with the reason.

Limits (documented in the README): at most `MAX_EXAMPLES` examples; every example must fit the
served model's context (prompt + output + EOS tokens), checked at POST by `ContextCheck`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorahub_serve.data.examples import Example, ExampleError, from_records
from lorahub_serve.errors import LorahubError
from lorahub_serve.serving.names import AdapterNameError, check_name

MAX_EXAMPLES = 1000
COMPOSITION_PREFIX = "lh-"  # see compositions.py
_FIELDS = {"name", "examples", "budget", "modules", "seed", "export"}
# "export": how the adapter composes the weights found, as in a request's `lorahub` object
# (`{"rule": "ties", "density": 0.5, "majority_sign_method": "total", "seed": 0}`; default: the search's rule)
_EXPORT_FIELDS = ("rule", "density", "majority_sign_method", "seed")
_INT_LIMITS = {"budget": (1, 100_000), "modules": (1, 10_000), "seed": (0, 2**32 - 1)}
_MODULE = re.compile(r"[A-Za-z0-9._-]{1,200}")


class RequestError(LorahubError, ValueError):
    """A bad adaptation request; `code` is the HTTP status, `param` the offending field."""

    def __init__(self, message: str, code: int = 400, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.param = param


@dataclass(frozen=True)
class AdaptRequest:
    name: str
    examples: tuple[Example, ...]
    budget: int | None = None
    modules: int | tuple[str, ...] | None = None  # K random hub modules, or their names
    seed: int | None = None
    # MergeSpec fields, as given (validated); the worker builds the spec (engine/job.py)
    export: tuple[tuple[str, Any], ...] | None = None

    def to_json(self) -> dict:
        """The request as stored in the job's record (and re-read by `parse_request`)."""
        body: dict[str, Any] = {"name": self.name,
                                "examples": [{"input": e.input, "output": e.output}
                                             for e in self.examples]}
        for key in ("budget", "seed"):
            if getattr(self, key) is not None:
                body[key] = getattr(self, key)
        if self.modules is not None:
            body["modules"] = list(self.modules) if isinstance(self.modules, tuple) else self.modules
        if self.export is not None:
            body["export"] = dict(self.export)
        return body


def parse_request(body: Any) -> AdaptRequest:
    """Validate a `POST /v1/adapters` body; raises `RequestError` naming the problem."""
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object with 'name' and 'examples'")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise RequestError(f"unknown field(s) {unknown}; allowed: {sorted(_FIELDS)}", param=unknown[0])
    if "name" not in body:
        raise RequestError("missing field 'name' (the adapter's name)", param="name")
    try:
        name = check_name(body["name"])
    except AdapterNameError as e:
        raise RequestError(str(e), param="name") from None
    if name.startswith(COMPOSITION_PREFIX):
        raise RequestError(f"adapter names starting with {COMPOSITION_PREFIX!r} are kept for "
                           "compositions named in requests; choose another name", param="name")
    records = body.get("examples")
    if not isinstance(records, list):
        raise RequestError("'examples' must be a list of {\"input\", \"output\"} objects",
                           param="examples")
    if len(records) > MAX_EXAMPLES:
        raise RequestError(f"{len(records)} examples given; at most {MAX_EXAMPLES} are accepted",
                           param="examples")
    try:
        examples = tuple(from_records(records))
    except ExampleError as e:
        raise RequestError(str(e), param="examples") from None
    options: dict[str, Any] = {}
    modules = body.get("modules")
    if isinstance(modules, list):  # named hub modules rather than a count
        if not modules or not all(isinstance(m, str) and _MODULE.fullmatch(m) for m in modules):
            raise RequestError("'modules' must be a count or a non-empty list of hub module names "
                               "(letters, digits, '.', '_', '-')", param="modules")
        options["modules"] = tuple(modules)
    for key, (lo, hi) in _INT_LIMITS.items():
        if key in options:
            continue
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise RequestError(f"'{key}' must be an integer in [{lo}, {hi}], got {value!r}", param=key)
        options[key] = value
    if body.get("export") is not None:
        options["export"] = _export(body["export"])
    return AdaptRequest(name, examples, **options)


def _export(spec: Any) -> tuple[tuple[str, Any], ...]:
    """The `export` object, checked by building its `MergeSpec` (a bad rule, density or sign
    method is named in the 400)."""
    from lorahub_serve.engine.merge import MergeSpec

    if not isinstance(spec, dict):
        raise RequestError("'export' must be an object {\"rule\": \"ties\", \"density\": 0.5, ...}",
                           param="export")
    unknown = sorted(set(spec) - set(_EXPORT_FIELDS))
    if unknown:
        raise RequestError(f"unknown field(s) {unknown} in 'export'; allowed: {', '.join(_EXPORT_FIELDS)}",
                           param="export")
    try:
        MergeSpec(**spec)
    except (TypeError, ValueError) as e:
        raise RequestError(f"in 'export': {e}", param="export") from None
    return tuple(sorted(spec.items()))


class ContextCheck:
    """Refuse (400) an example whose tokens (as the search encodes it) exceed `max_tokens`.

    The tokenizer is loaded from `model_folder` on first use; `max_tokens` is the served model's
    context (vLLM's `max_model_len`).
    """

    def __init__(self, model_folder: Path, max_tokens: int):
        self.model_folder, self.max_tokens = Path(model_folder), int(max_tokens)
        self._tokenizer = None

    def load(self) -> ContextCheck:
        """Load the tokenizer now (at start), not on the first request."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_folder)
        return self

    def __call__(self, examples: tuple[Example, ...]) -> None:
        from lorahub_serve.prompting import ExampleTooLongError, encode_example

        self.load()
        for i, ex in enumerate(examples):
            if len((ex.input + ex.output).encode()) + 8 <= self.max_tokens:
                continue  # a token covers at least a byte (+ BOS/EOS and the like): it fits
            try:
                encode_example(self._tokenizer, ex, self.max_tokens, truncate=False)
            except ExampleTooLongError as e:
                raise RequestError(f"examples[{i}]: {e}", param="examples") from None
