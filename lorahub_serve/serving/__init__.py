"""vLLM serving: the only place that imports vLLM.

`lorahub-serve serve` runs vLLM's own OpenAI-compatible server and engine for a base model with
LoRA enabled, and serves every adapter of a store folder by name (hot-loaded, no restart).

- `names`    adapter-name validation; names -> folders that never leave the store
- `store`    vets an adapter before vLLM sees it (safetensors only, rank, fits the base model)
- `resolver` vLLM `LoRAResolver` over the store (hot-loading)
- `jobs`     `POST /v1/adapters` jobs: durable records in the store, a bounded queue, restart
- `job_request` the job request's validation (limits, context length)
- `worker`   warm worker processes that hold the engine and run jobs (JSON-lines protocol)
- `routes`   our HTTP routes (`/v1/adapters`, a `/v1/models` that lists the store)
- `auth`     API key on every route
- `server`   composes vLLM's launcher with the pieces above; `cli` registers `serve`
- `process`  run `serve` as a child process (tests, benchmarks)

Only `resolver` and `server` (and `routes`, at request time) import vLLM.
"""
