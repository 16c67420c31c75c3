"""`target_logits`: the LM head only at label positions equals the model's own loss and gradients."""

import pytest
import torch

from lorahub_serve.prompting import IGNORE, causal_batch
from lorahub_serve.target_logits import row_token_losses, target_loss
from lorahub_serve.testing import tiny_gemma3, tiny_llama


def _batch(vocab: int):
    g = torch.Generator().manual_seed(0)
    rows = []
    for plen, tlen in ((5, 3), (9, 1), (3, 6)):  # ragged: padding and prompts carry no loss
        ids = torch.randint(4, vocab, (plen + tlen,), generator=g).tolist()
        rows.append((ids[:plen], ids[plen:]))
    return causal_batch(rows, 0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("target-logits")
    llama, _ = tiny_llama(root / "llama")
    gemma, _ = tiny_gemma3(root / "gemma", final_logit_softcapping=5.0)  # a cap that bites
    return {"llama": llama, "gemma3-softcap": gemma}


@pytest.mark.parametrize("name", ["llama", "gemma3-softcap"])
def test_target_loss_equals_the_models_loss(models, name):
    model = models[name]
    ids, mask, labels = _batch(model.config.vocab_size)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        got = target_loss(model, ids, mask, labels)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["llama", "gemma3-softcap"])
def test_per_row_losses_match_a_full_logits_reference(models, name):
    model = models[name]
    ids, mask, labels = _batch(model.config.vocab_size)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        total, count = row_token_losses(model, ids, mask, labels)
    gold = labels[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), gold, ignore_index=IGNORE, reduction="none")
    torch.testing.assert_close(total, ce.sum(1), rtol=1e-5, atol=1e-5)
    assert count.tolist() == (gold != IGNORE).sum(1).tolist() == [3, 1, 6]


def test_lora_gradients_equal_the_models_own(models):
    """Through a PEFT wrapper (the hub's training path) the LoRA gradients are the same."""
    from peft import LoraConfig, get_peft_model

    base = models["gemma3-softcap"]
    ids, mask, labels = _batch(base.config.vocab_size)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    try:
        grads = []
        for loss_of in (lambda: peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss,
                        lambda: target_loss(peft_model, ids, mask, labels)):
            peft_model.zero_grad()
            loss_of().backward()
            grads.append([p.grad.clone() for p in peft_model.parameters() if p.requires_grad])
        assert grads[0] and all(g.abs().sum() > 0 for g in grads[0])
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    finally:
        peft_model.unload()
