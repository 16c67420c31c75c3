"""Compositions named in the request: `"lorahub": {"modules": {name: weight}, "rule": ...}`
(with PEFT's merges also `"density"`, `"majority_sign_method"`, `"seed"`).

`/v1/completions` and `/v1/chat/completions` accept, in a top-level body field (the `openai`
client sends it with `extra_body`), a composition of hub modules instead of a stored adapter;
`model` is then the base model's name. `CompositionMiddleware` (ASGI, before vLLM's routes):

1. checks the specification: known hub modules, at most `MAX_MODULES`, finite weights with
   |w| <= `MAX_WEIGHT`, a rule and its parameters (the engine's `MergeSpec`):
   - `lorahub` (default): A = Σ wA, B = Σ w·s·B, rank max rₖ;
   - `linear`: A, B stacked, ΔW = Σ w·s·BA exactly, rank Σ rₖ;
   - `ties`, `dare_linear`, `dare_ties`, `magnitude_prune`: PEFT's merges of modules of one
     rank r (`engine/merge.py`), rank r; `density` in (0, 1] (all four, default 0.5),
     `majority_sign_method` "total" | "frequency" (ties, dare_ties; default total), `seed`
     (dare_*: the random pruning's, default 0);
   a rank (the engine's `composed_rank`) within `--max-lora-rank`; else a 400 in OpenAI's error
   format naming the field and the problem;
2. names the composition by a hash of its content (rule and its parameters, module names, their
   sha256, weights): `lh-<24 hex>`;
3. writes it into the store with the engine's export (`compose_factors` + `write_adapter`)
   unless it is there already, keeping at most `max_cached` compositions (least recently used
   ones are removed from the store and unloaded from vLLM). Several servers may share the store
   (Ray Serve replicas): the build holds the name's file lock (`store_locks.name_lock`), so two
   servers asked for one new composition at once build it once, and the folder is written in a
   hidden temporary and renamed into place only if the name is still free (`publish_dir`), so
   no reader ever sees half of it and no writer replaces another's;
4. rewrites the body to `model: lh-...` without `lorahub`, and vLLM serves it like any stored
   adapter (same batches, its own bounded LoRA slots), and lists it in `GET /v1/models`.

Factors are loaded from the hub per composition (only its modules) onto a base model built on
the `meta` device (layer shapes only, no weights), so the server holds no second model.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from lorahub_serve.atomic import make_temp_dir
from lorahub_serve.choices import EXPORT_RULES, MERGE_RULES, RULES
from lorahub_serve.errors import LorahubError
from lorahub_serve.serving.errors import error_body
from lorahub_serve.serving.job_request import COMPOSITION_PREFIX
from lorahub_serve.serving.store import AdapterStore, unload_from_vllm
from lorahub_serve.serving.store_locks import name_lock, publish_dir

if TYPE_CHECKING:
    from lorahub_serve.engine.merge import MergeSpec

PREFIX = COMPOSITION_PREFIX
FIELDS = ("modules", "rule", "density", "majority_sign_method", "seed")  # of the `lorahub` object
MAX_MODULES = 32
MAX_WEIGHT = 10.0
ROUTES = frozenset({"/v1/completions", "/v1/chat/completions"})


class CompositionError(LorahubError, ValueError):
    """A bad `lorahub` specification (-> 400, param `lorahub`)."""


class Compositions:
    """Check, name, build and cache compositions of one hub's modules in one store."""

    def __init__(self, store: AdapterStore, hub: Path, model_folder: Path, base_name: str,
                 max_rank: int, max_cached: int = 64):
        from lorahub_serve.engine.hub import read_manifest

        self.store, self.hub, self.model_folder = store, Path(hub), Path(model_folder)
        self.base_name, self.max_rank, self.max_cached = base_name, max_rank, max_cached
        self.modules = {m.name: m for m in read_manifest(self.hub)}
        cached = [p for p in store.root.glob(f"{PREFIX}*") if p.is_dir()]
        self._lru: OrderedDict[str, None] = OrderedDict(
            (p.name, None) for p in sorted(cached, key=lambda p: p.stat().st_mtime))
        self._locks: dict[str, asyncio.Lock] = {}
        self._meta_model = None
        self.made = 0  # compositions this server built
        self.hits = 0  # requests served by a composition already in the store

    def check(self, spec, model) -> tuple[MergeSpec, list[str], list[float]]:
        """(rule and its parameters, module names, weights) of a valid specification, else
        `CompositionError`."""
        from lorahub_serve.engine.merge import MergeSpec

        if model != self.base_name:
            raise CompositionError(f"with 'lorahub', 'model' must be the base model's name "
                                   f"{self.base_name!r}, got {model!r}")
        if not isinstance(spec, dict) or not isinstance(spec.get("modules"), dict):
            raise CompositionError("'lorahub' must be an object {\"modules\": {\"<hub module>\": "
                                   "weight, ...}, \"rule\": \"lorahub\" | \"linear\" | ...}")
        unknown = sorted(set(spec) - set(FIELDS))
        if unknown:
            raise CompositionError(f"unknown field(s) {unknown} in 'lorahub'; allowed: {', '.join(FIELDS)}")
        rule = spec.get("rule", "lorahub")
        if rule not in EXPORT_RULES:
            raise CompositionError(f"'lorahub.rule' must be {' or '.join(map(repr, RULES))} (LoraHub's) "
                                   f"or one of PEFT's merges {', '.join(map(repr, MERGE_RULES))}; "
                                   f"got {rule!r}")
        try:
            merge = MergeSpec(rule, **{k: spec[k] for k in FIELDS[2:] if k in spec})
        except ValueError as e:
            raise CompositionError(f"in 'lorahub': {e}") from None  # the message names the field
        mods = spec["modules"]
        if not 1 <= len(mods) <= MAX_MODULES:
            raise CompositionError(f"'lorahub.modules' names {len(mods)} modules; give 1 to "
                                   f"{MAX_MODULES}")
        names = sorted(mods)
        missing = [n for n in names if n not in self.modules]
        if missing:
            shown = ", ".join(sorted(self.modules)[:10]) + (", ..." if len(self.modules) > 10 else "")
            raise CompositionError(f"unknown hub module(s) {missing[:5]}; this hub has: {shown}")
        weights = []
        for n in names:
            w = mods[n]
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) \
                    or abs(w) > MAX_WEIGHT:
                raise CompositionError(f"weight of module {n!r} must be a finite number in "
                                       f"[-{MAX_WEIGHT:g}, {MAX_WEIGHT:g}], got {w!r}")
            weights.append(float(w))
        from lorahub_serve.engine.export import composed_rank

        ranks = [self.modules[n].rank for n in names]
        try:
            r, rank = max(ranks), composed_rank(ranks, merge)
        except ValueError as e:  # PEFT's merges: modules of one rank
            raise CompositionError(f"'lorahub.modules': {e}") from None
        if rank > self.max_rank:
            raise CompositionError(f"this composition has rank {rank} (rule {rule!r}, {len(names)} "
                                   f"module(s) of rank up to {r}), above this server's "
                                   f"--max-lora-rank {self.max_rank}; use fewer modules, the "
                                   "'lorahub' rule, or restart serve with a larger --max-lora-rank")
        return merge, names, weights

    def name(self, merge: MergeSpec, names: list[str], weights: list[float]) -> str:
        """`lh-` + 24 hex of the content: rule, its parameters (none for lorahub and linear,
        whose names predate them), modules (name, sha256, weight)."""
        content = {"rule": merge.rule, **merge.params(),
                   "modules": [[n, self.modules[n].sha256, w] for n, w in zip(names, weights)]}
        digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
        return PREFIX + digest[:24]

    async def ensure(self, spec, model) -> tuple[str, list[str]]:
        """The composition's adapter name, built if needed; and the names evicted to make room."""
        merge, names, weights = self.check(spec, model)
        name = self.name(merge, names, weights)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            built = not self.store.exists(name) and await asyncio.to_thread(
                self._build_once, name, merge, names, weights)
        self.made, self.hits = self.made + bool(built), self.hits + (not built)
        self._lru[name] = None
        self._lru.move_to_end(name)
        evicted = []
        while len(self._lru) > self.max_cached:
            old, _ = self._lru.popitem(last=False)
            with name_lock(self._jobs_dir, old):  # never while another server builds it
                self.store.remove(old)
            evicted.append(old)
        return name, evicted

    @property
    def _jobs_dir(self) -> Path:
        from lorahub_serve.serving.jobs import JOBS_DIR

        return self.store.root / JOBS_DIR

    def _build_once(self, name: str, merge: MergeSpec, names: list[str], weights: list[float]) -> bool:
        """Build `name` unless another server has meanwhile; True if this call built it."""
        with name_lock(self._jobs_dir, name):
            if self.store.exists(name):
                return False
            tmp = make_temp_dir(self.store.folder(name))
            try:
                self._build(tmp / "adapter", merge, names, weights)
                return publish_dir(tmp / "adapter", self.store.folder(name))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    def _build(self, out: Path, merge: MergeSpec, names: list[str], weights: list[float]) -> None:
        from lorahub_serve.engine.export import compose_factors, write_adapter
        from lorahub_serve.engine.hub import stack_modules

        stack = stack_modules(self._meta(), [self.modules[n] for n in names])  # checks the files
        meta = {"format": 1, "composition": True, "base_model": self.base_name,
                "base_model_sha256": self.store.base.fingerprint, **merge.to_dict(),
                "modules": [{"name": n, "sha256": self.modules[n].sha256, "weight": w}
                            for n, w in zip(names, weights)], "weights": weights}
        factors = compose_factors(stack, list(range(len(names))), weights, merge, model=self._meta())
        write_adapter(out, factors, self.base_name, meta)

    def _meta(self):
        """The base model's layers on the `meta` device: shapes for `stack_modules`, no weights."""
        if self._meta_model is None:
            import torch
            from transformers import AutoConfig, AutoModelForCausalLM

            config = AutoConfig.from_pretrained(self.model_folder)
            with torch.device("meta"):
                self._meta_model = AutoModelForCausalLM.from_config(config)
        return self._meta_model


class CompositionMiddleware:
    """Rewrite completions requests that carry `lorahub` into requests for the composed adapter."""

    def __init__(self, app, compositions: Compositions):
        self.app, self.compositions = app, compositions

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in ROUTES:
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if b'"lorahub"' in body:
            try:
                body = await self._rewrite(scope, body)
            except CompositionError as e:
                return await _send_error(send, str(e))
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        return await self.app({**scope, "headers": headers}, replay, send)

    async def _rewrite(self, scope, body: bytes) -> bytes:
        try:
            request = json.loads(body)
        except ValueError:
            return body  # vLLM answers malformed JSON itself
        if not isinstance(request, dict) or "lorahub" not in request:
            return body
        spec = request.pop("lorahub")
        name, evicted = await self.compositions.ensure(spec, request.get("model"))
        if evicted:
            await unload_from_vllm(scope["app"], evicted)
        request["model"] = name
        return json.dumps(request).encode()


async def _send_error(send, message: str) -> None:
    payload = json.dumps(error_body(message, "BadRequestError", 400, "lorahub")).encode()
    await send({"type": "http.response.start", "status": 400,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
