"""The HTTP routes lorahub-serve adds to vLLM's OpenAI server.

- `GET /v1/models`: vLLM's list (base model + loaded adapters) plus every servable adapter in the
  store, so an adapter is listed as soon as it is written, before its first request loads it.
- `POST /v1/adapters` `{"name", "examples": [{"input", "output"}...], "budget"?, "modules"?,
  "seed"?}`: start an adaptation job -> 202 with the job (`id`, `state`, ...).
- `GET /v1/adapters/{name}`: the job's state (`queued`/`running`/`succeeded`/`failed`) and loss;
  for an adapter stored some other way, `succeeded` (or `failed` with the reason it is refused).
- `GET /v1/adapters`: every stored adapter and every job of this server's life.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .errors import error_response
from .jobs import AdaptJobs, RequestError, final_loss, parse_request
from .names import AdapterNameError
from .store import LORAHUB_FILE, AdapterRefused, AdapterStore


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
            body = json.loads(await raw_request.body() or b"null")
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
                             "jobs": [job.to_json() for job in jobs.jobs.values()]})

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
