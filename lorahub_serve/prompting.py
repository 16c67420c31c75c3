"""One prompt format for hub training, search, evaluation and serving.

An example is the plain-text prompt followed by the output and the tokenizer's EOS token; loss is
taken on the output tokens (and EOS) only. Keeping this in one place matters: LoraHub works when
the hub's modules, the search and the served prompts all see the same format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lorahub_serve.data.examples import Example
from lorahub_serve.errors import LorahubError

IGNORE = -100  # the label of a position that takes no loss (PyTorch's and HF's ignore_index)


class ExampleTooLongError(LorahubError, ValueError):
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
    if adds_bos(tokenizer):
        ids = [tokenizer.bos_token_id] + ids
    return ids


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer's own convention starts a text with BOS: its `add_bos_token`, or a
    post-processor that adds it (Gemma's tokenizer.json: transformers 5 drops `add_bos_token`
    from tokenizer_config.json when a tokenizer.json is there, and the attribute reads False)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    if getattr(tokenizer, "add_bos_token", False):
        return True
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos


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


def pad_id(tokenizer) -> int:
    """The id padding uses: the tokenizer's pad token, else its EOS (safe to feed to `generate`),
    else 0. Padded positions are masked and take no loss, so only validity matters."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return tid
    return 0


def pad_rows(rows: Sequence[Sequence[int]], fill: int, left: bool = False):
    """[len(rows), longest] int64 tensor: each row padded with `fill` on the right (or the left,
    as generation wants, so every prompt ends at the last column)."""
    import torch

    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            (out[i, width - len(r):] if left else out[i, : len(r)]).copy_(torch.as_tensor(r))
    return out


def causal_batch(rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad: int):
    """Decoder-only training rows (prompt_ids, target_ids) as HF model inputs, right-padded:
    ids [B, L], attention mask [B, L], labels [B, L] (the target tokens, IGNORE elsewhere; the
    model shifts them, so position t is scored on predicting token t+1)."""
    seqs = [list(p) + list(t) for p, t in rows]
    ids = pad_rows(seqs, pad)
    mask = pad_rows([[1] * len(s) for s in seqs], 0)
    labels = pad_rows([[IGNORE] * len(p) + list(t) for p, t in rows], IGNORE)
    return ids, mask, labels
