"""vLLM `LoRAResolver` over the adapter store: how a name never seen before gets served.

vLLM's OpenAI server asks its registered resolvers for a `LoRARequest` whenever a request names a
model that is neither the base model nor an adapter it has already loaded (this needs
`VLLM_ALLOW_RUNTIME_LORA_UPDATING`). vLLM then loads the adapter into the engine and remembers it,
so an adapter written into the store after start is served on its first request, no restart.

Outcomes, all in OpenAI's error format through vLLM's own exception handlers:
- nothing stored under the name -> None -> vLLM's 404 `NotFoundError`;
- a bad name (`../x`) or an unservable adapter (rank too high, other base model, not
  safetensors) -> `VLLMValidationError` -> 400 with our message, `param: "model"`.
"""

from __future__ import annotations

from vllm.exceptions import VLLMValidationError
from vllm.logger import init_logger
from vllm.lora.request import LoRARequest
from vllm.lora.resolver import LoRAResolver

from lorahub_serve.serving.names import AdapterNameError
from lorahub_serve.serving.store import AdapterRefused, AdapterStore

logger = init_logger(__name__)

RESOLVER_NAME = "lorahub-serve store"


class StoreResolver(LoRAResolver):
    """Resolve adapter names to folders of one `AdapterStore`, vetting each adapter first."""

    def __init__(self, store: AdapterStore):
        self.store = store

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        try:
            info = self.store.inspect(lora_name)
        except (AdapterNameError, AdapterRefused) as e:
            logger.warning("refused adapter request: %s", e)
            raise VLLMValidationError(str(e), parameter="model") from None
        if info is None:
            return None
        logger.info("serving adapter %r (rank %d) from the store", info.name, info.rank)
        # vLLM replaces lora_int_id with its own counter before loading.
        return LoRARequest(lora_name=info.name, lora_int_id=1, lora_path=str(info.path))
