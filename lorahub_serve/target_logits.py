"""Logits only where a loss is taken: the LM head applied to the hidden states at label positions.

A causal LM's forward projects every position onto the vocabulary. With Gemma 3's 262k tokens
that is most of a training step's time and memory, while only the answer tokens carry a loss.
Here the decoder runs as usual and the head (with the model's final soft-cap, where it has one)
is applied to the positions whose next token is a label. The result equals the model's own
`.loss` (tests/test_target_logits.py); LoRA layers injected by PEFT run inside the decoder.
"""

from __future__ import annotations

import torch

from lorahub_serve.prompting import IGNORE


def _causal_lm(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def target_logits(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits [n, V] in fp32, gold [n], row [n]) for the n label tokens of the batch.

    `labels` holds IGNORE where no loss is taken (a row's prompt and padding). Models without a
    separate decoder and head (encoder-decoders) take the full forward instead.
    """
    gold = labels[:, 1:]
    keep = gold != IGNORE
    row = keep.nonzero()[:, 0]
    lm = _causal_lm(model)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") and not lm.config.is_encoder_decoder else None
    if head is None or decoder is None:
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1][keep]
        return logits.float(), gold[keep], row
    hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1][keep]
    logits = head(hidden).float()
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if cap:  # as the model's own forward does to its logits (Gemma 2)
        logits = torch.tanh(logits / cap) * cap
    return logits, gold[keep], row


def target_loss(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the label tokens: the model's `.loss`, without the full-vocab logits."""
    logits, gold, _ = target_logits(model, ids, mask, labels)
    return torch.nn.functional.cross_entropy(logits, gold)


def row_token_losses(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed CE per row [B], label tokens per row [B]) of the batch."""
    logits, gold, row = target_logits(model, ids, mask, labels)
    ce = torch.nn.functional.cross_entropy(logits, gold, reduction="none")
    n_rows = ids.shape[0]
    total = torch.zeros(n_rows, dtype=ce.dtype).index_add_(0, row, ce)
    count = torch.zeros(n_rows, dtype=torch.long).index_add_(0, row, torch.ones_like(row))
    return total, count
