"""Compositions named in the request: `"lorahub": {"modules": {name: weight}, "rule": ...}`.

`/v1/completions` and `/v1/chat/completions` accept, in a top-level body field (the `openai`
client sends it with `extra_body`), a composition of hub modules instead of a stored adapter;
`model` is then the base model's name. `CompositionMiddleware` (ASGI, before vLLM's routes):

1. checks the specification: known hub modules, at most `MAX_MODULES`, finite weights with
   |w| <= `MAX_WEIGHT`, rule `lorahub` (A = Σ wA, B = Σ w·s·B) or `linear` (A, B stacked), a
   rank (the engine's `composed_rank`: max rₖ, or Σ rₖ for `linear`) within `--max-lora-rank`;
   else a 400 in OpenAI's error format naming the problem;
2. names the composition by a hash of its content (rule, module names, their sha256, weights):
   `lh-<24 hex>`;
3. writes it into the store with the engine's export (`compose_factors` + `write_adapter`,
   atomically) unless it is there already, keeping at most `max_cached` compositions (least
   recently used ones are removed from the store and unloaded from vLLM);
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
from collections import OrderedDict
from pathlib import Path

from lorahub_serve.choices import RULES
from lorahub_serve.errors import LorahubError
from lorahub_serve.serving.errors import error_body
from lorahub_serve.serving.job_request import COMPOSITION_PREFIX
from lorahub_serve.serving.store import AdapterStore, unload_from_vllm

PREFIX = COMPOSITION_PREFIX
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

    def check(self, spec, model) -> tuple[str, list[str], list[float]]:
        """(rule, module names, weights) of a valid specification, else `CompositionError`."""
        if model != self.base_name:
            raise CompositionError(f"with 'lorahub', 'model' must be the base model's name "
                                   f"{self.base_name!r}, got {model!r}")
        if not isinstance(spec, dict) or not isinstance(spec.get("modules"), dict):
            raise CompositionError("'lorahub' must be an object {\"modules\": {\"<hub module>\": "
                                   "weight, ...}, \"rule\": \"lorahub\" | \"linear\"}")
        unknown = sorted(set(spec) - {"modules", "rule"})
        if unknown:
            raise CompositionError(f"unknown field(s) {unknown} in 'lorahub'; allowed: modules, rule")
        rule = spec.get("rule", "lorahub")
        if rule not in RULES:
            raise CompositionError(f"'lorahub.rule' must be 'lorahub' or 'linear', got {rule!r}")
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
        r, rank = max(ranks), composed_rank(ranks, rule)
        if rank > self.max_rank:
            raise CompositionError(f"this composition has rank {rank} (rule {rule!r}, {len(names)} "
                                   f"module(s) of rank up to {r}), above this server's "
                                   f"--max-lora-rank {self.max_rank}; use fewer modules, the "
                                   "'lorahub' rule, or restart serve with a larger --max-lora-rank")
        return rule, names, weights

    def name(self, rule: str, names: list[str], weights: list[float]) -> str:
        content = {"rule": rule, "modules": [[n, self.modules[n].sha256, w]
                                             for n, w in zip(names, weights)]}
        digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
        return PREFIX + digest[:24]

    async def ensure(self, spec, model) -> tuple[str, list[str]]:
        """The composition's adapter name, built if needed; and the names evicted to make room."""
        rule, names, weights = self.check(spec, model)
        name = self.name(rule, names, weights)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if not self.store.exists(name):
                await asyncio.to_thread(self._build, name, rule, names, weights)
        self._lru[name] = None
        self._lru.move_to_end(name)
        evicted = []
        while len(self._lru) > self.max_cached:
            old, _ = self._lru.popitem(last=False)
            self.store.remove(old)
            evicted.append(old)
        return name, evicted

    def _build(self, name: str, rule: str, names: list[str], weights: list[float]) -> None:
        from lorahub_serve.engine.export import compose_factors, write_adapter
        from lorahub_serve.engine.hub import stack_modules

        stack = stack_modules(self._meta(), [self.modules[n] for n in names])
        meta = {"format": 1, "composition": True, "base_model": self.base_name,
                "base_model_sha256": self.store.base.fingerprint, "rule": rule,
                "modules": [{"name": n, "sha256": self.modules[n].sha256, "weight": w}
                            for n, w in zip(names, weights)], "weights": weights}
        write_adapter(self.store.folder(name), compose_factors(stack, list(range(len(names))),
                                                               weights, rule),
                      self.base_name, meta)

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
