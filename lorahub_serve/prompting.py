"""One prompt format for hub training, search, evaluation and serving.

An example is the plain-text prompt followed by the output and the tokenizer's EOS token; loss is
taken on the output tokens (and EOS) only. Keeping this in one place matters: LoraHub works when
the hub's modules, the search and the served prompts all see the same format.
"""

from __future__ import annotations

from dataclasses import dataclass

from .data.examples import Example


class ExampleTooLongError(ValueError):
    pass


@dataclass(frozen=True)
class EncodedExample:
    prompt_ids: tuple[int, ...]
    target_ids: tuple[int, ...]

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.target_ids)


def prompt_ids(tokenizer, text: str) -> list[int]:
    """A prompt's token ids exactly as training and search see them (BOS only where the
    tokenizer's own convention adds one). Generation, local or through vLLM, uses this too."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if getattr(tokenizer, "bos_token_id", None) is not None and getattr(tokenizer, "add_bos_token", False):
        ids = [tokenizer.bos_token_id] + ids
    return ids


def encode_example(tokenizer, example: Example, max_length: int | None = None,
                   truncate: bool = True, eos: bool = True) -> EncodedExample:
    """Tokenize prompt and output separately (so the boundary is exact) and append EOS (unless
    `eos` is False: rank classification scores an answer string alone).

    An example longer than `max_length` keeps its output and loses prompt tokens from the
    left (when `truncate`), or raises `ExampleTooLongError`.
    """
    prompt = prompt_ids(tokenizer, example.input)
    target = tokenizer(example.output, add_special_tokens=False)["input_ids"]
    if eos and tokenizer.eos_token_id is not None:
        target = target + [tokenizer.eos_token_id]
    if max_length is not None and len(prompt) + len(target) > max_length:
        overflow = len(prompt) + len(target) - max_length
        if not truncate or overflow >= len(prompt):
            raise ExampleTooLongError(
                f"example of {len(prompt) + len(target)} tokens exceeds the model's context of "
                f"{max_length} tokens (input starts {example.input[:60]!r}); shorten it"
            )
        prompt = prompt[overflow:]
    return EncodedExample(tuple(prompt), tuple(target))


def encode_seq2seq(tokenizer, example: Example, max_length: int | None = None,
                   eos: bool = True) -> EncodedExample:
    """Encoder-decoder: prompt_ids feed the encoder, target_ids are the decoder labels (ending
    with the tokenizer's EOS unless `eos` is False)."""
    prompt = tokenizer(example.input, truncation=max_length is not None, max_length=max_length)["input_ids"]
    target = tokenizer(example.output.strip(), truncation=max_length is not None, max_length=max_length,
                       add_special_tokens=eos)["input_ids"]
    return EncodedExample(tuple(prompt), tuple(target))
