"""The HTTP routes lorahub-serve adds to vLLM's OpenAI server.

- `GET /v1/models`: vLLM's list (base model + loaded adapters) plus every servable adapter in the
  store, so an adapter is listed as soon as it is written, before its first request loads it.
- `POST /v1/adapters` `{"name", "examples": [{"input", "output"}...], "budget"?, "modules"?,
  "seed"?}`: start an adaptation job -> 202 with the job (`id`, `state`, ...).
- `GET /v1/adapters/{name}`: the job's state (`queued`/`running`/`succeeded`/`failed`) and loss;
  for an adapter stored some other way, `succeeded` (or `failed` with the reason it is refused).
- `GET /v1/adapters`: every stored adapter (`data`) and every job on record (`jobs`), including
  jobs of earlier runs of the server on this store.
- `DELETE /v1/adapters/{name}`: cancel the queued or running job for `name` (-> the job, state
  `cancelled`), or else remove the stored adapter `name` and its finished job records
  (-> `{"name", "object": "adapter", "deleted": true}`); 404 if there is neither.

A `POST /v1/adapters` body may be at most `MAX_BODY_BYTES` (8 MiB); a longer one gets a 413
before it is read (from its Content-Length, or as soon as a chunked body passes the limit).
A full job queue gets a 429.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from lorahub_serve.formats import LORAHUB_FILE
from lorahub_serve.serving.errors import error_response
from lorahub_serve.serving.jobs import AdaptJobs, RequestError, final_loss, parse_request
from lorahub_serve.serving.names import AdapterNameError, check_name
from lorahub_serve.serving.store import AdapterRefused, AdapterStore, unload_from_vllm

MAX_BODY_BYTES = 8 << 20


class BodyTooLarge(Exception):
    pass


async def _read_body(raw_request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, refusing (BodyTooLarge) one over `limit` before it is read whole."""
    declared = raw_request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in raw_request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def build_router(store: AdapterStore, jobs: AdaptJobs) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models")
    async def list_models(raw_request: Request):
        from vllm.entrypoints.serve.engine.protocol import ModelCard, ModelPermission

        serving = raw_request.app.state.openai_serving_models
        listing = await serving.show_available_models()
        known = {card.id for card in listing.data}
        base = serving.base_model_paths[0].name
        listing.data.extend(
            ModelCard(id=info.name, root=info.name, parent=base, permission=[ModelPermission()])
            for info in store.servable() if info.name not in known)
        return JSONResponse(listing.model_dump())

    @router.post("/v1/adapters", status_code=202)
    async def create_adapter(raw_request: Request):
        try:
            body = json.loads(await _read_body(raw_request) or b"null")
        except BodyTooLarge:
            response = error_response(f"the body is larger than {MAX_BODY_BYTES} bytes, the limit "
                                      "for POST /v1/adapters; send fewer or shorter examples", 413)
            response.headers["connection"] = "close"  # the rest of the body is never read
            return response
        except ValueError as e:
            return error_response(f"the body is not valid JSON ({e})", 400)
        try:
            job = jobs.submit(parse_request(body))
        except RequestError as e:
            return error_response(str(e), e.code, e.param)
        return JSONResponse(job.to_json(), status_code=202)

    @router.get("/v1/adapters/{name}")
    async def adapter_status(name: str):
        try:
            job = jobs.latest(name)
            if job is not None:
                return JSONResponse(job.to_json())
            return JSONResponse(_stored_status(store, name))
        except AdapterNameError as e:
            return error_response(str(e), 400, "name")
        except LookupError:
            return error_response(f"no adapter or adaptation job named {name!r}", 404, "name")

    @router.get("/v1/adapters")
    async def list_adapters():
        stored = [_stored_status(store, name) for name in store.names()]
        return JSONResponse({"object": "list", "data": stored,
                             "jobs": [job.to_json() for job in jobs.listing()]})

    @router.delete("/v1/adapters/{name}")
    async def delete_adapter(name: str, raw_request: Request):
        try:
            check_name(name)
            job = await jobs.cancel(name)
            if job is not None:
                return JSONResponse(job.to_json())
            removed = store.remove(name)
        except AdapterNameError as e:
            return error_response(str(e), 400, "name")
        forgotten = jobs.forget(name)
        if not removed and not forgotten:
            return error_response(f"no adapter or adaptation job named {name!r}", 404, "name")
        if removed:
            await unload_from_vllm(raw_request.app, [name])
        return JSONResponse({"name": name, "object": "adapter", "deleted": True})

    return router


def _stored_status(store: AdapterStore, name: str) -> dict:
    """Status of an adapter already in the store (raises LookupError if there is none)."""
    try:
        info = store.inspect(name)
    except AdapterRefused as e:
        return {"name": name, "object": "adapter", "state": "failed", "error": str(e), "loss": None}
    if info is None:
        raise LookupError(name)
    return {"name": name, "object": "adapter", "state": "succeeded", "rank": info.rank,
            "loss": final_loss(info.path / LORAHUB_FILE, None), "error": None}
