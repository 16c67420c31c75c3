"""lorahub-serve: batched, distributed and servable LoraHub.

`adapt(...)` composes a hub's LoRA modules for a new task from a few examples;
`lorahub-serve serve` hosts the results behind vLLM's OpenAI-compatible server.
"""

__version__ = "0.1.0"


def adapt(*args, **kwargs):
    """See `lorahub_serve.engine.adapt.adapt` (imported lazily: torch is heavy)."""
    from lorahub_serve.engine.adapt import adapt as _adapt

    return _adapt(*args, **kwargs)
