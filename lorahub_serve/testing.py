"""Tiny random models and LoRA hubs, built offline in seconds (tests, benchmarks, demos of speed).

Nothing here touches the network: the tokenizer is a word-level tokenizer built from a fixed
vocabulary, saved as a standard `PreTrainedTokenizerFast` so transformers and vLLM load it.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

_WORDS = (
    list(string.ascii_lowercase) + list(string.ascii_uppercase) + list(string.digits)
    + [" ", "(", ")", ":", ".", ",", "?", "!", "'", "-", "\n", "Q", "A", "Options", "yes", "no", "the",
       "a", "is", "of", "to", "and", "answer", "question", "true", "false", "plausible",
       "implausible", "left", "right", "up", "down", "red", "blue", "green", "capital", "France",
       "Paris", "what", "which", "who", "cat", "dog", "sort", "words", "list"]
)


# Five few-shot examples written in the tiny tokenizer's vocabulary (tests, demos of the API).
FEW_SHOT = (
    {"input": "Q: is the cat blue?\nA:", "output": " no"},
    {"input": "Q: what is the capital of France?\nA:", "output": " Paris"},
    {"input": "Q: sort the words: dog cat\nA:", "output": " cat dog"},
    {"input": "Q: which is left of up?\nOptions:\n(A) red\n(B) green\nA:", "output": " (B)"},
    {"input": "Q: 2 and 3?\nA:", "output": " 5"},
)


def build_tokenizer(out_dir: Path):
    """A word-level tokenizer over a fixed vocabulary (letters, digits, punctuation, a few words)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(special + sorted(set(_WORDS) - set(special)))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Words in the vocabulary are single tokens; spaces and other text go character by character.
    tk.pre_tokenizer = pre_tokenizers.Split(
        pattern=__import__("tokenizers").Regex(r"[A-Za-z]+|\s|."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    fast.save_pretrained(out_dir)
    return fast


def tiny_llama(out_dir: Path, seed: int = 0, layers: int = 2, hidden: int = 64):
    """A random LlamaForCausalLM (GQA, like SmolLM2) with its tokenizer, saved to `out_dir`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tok = build_tokenizer(out_dir)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=512,
        tie_word_embeddings=True, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    return model, tok


def tiny_gemma3(out_dir: Path, seed: int = 0, hidden: int = 64, sliding_window: int = 16,
                final_logit_softcapping: float | None = None):
    """A random Gemma3ForCausalLM (text only, like Gemma 3 270M) with the same tokenizer, saved to
    `out_dir`: 3 layers (sliding, sliding, full attention), GQA, q/k norms, embeddings scaled by
    √hidden and tied, and a query_pre_attn_scalar unlike head_dim so that a wrong attention scale
    shows. Weights are re-drawn with std 0.1 (Gemma's init, std 0.02 under √hidden-scaled
    embeddings, leaves every loss at log V) and the norms' weights at random, so any missed detail
    moves the losses. `final_logit_softcapping` (None in Gemma 3; 30 in Gemma 2) tests the cap."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    out_dir = Path(out_dir)
    tok = build_tokenizer(out_dir)
    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, query_pre_attn_scalar=24,
        sliding_window=sliding_window, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=512, final_logit_softcapping=final_logit_softcapping,
        attn_logit_softcapping=None, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    model = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(-0.5, 0.5)  # Gemma's norms scale by (1 + weight)
            elif p.dim() == 2:
                p.normal_(0.0, 0.1)
    model.save_pretrained(out_dir, safe_serialization=True)
    return model, tok


def tiny_llama_for_vllm(out_dir: Path):
    """A tiny Llama vLLM can serve: head size 32 (`hidden=128`; vLLM's CPU attention needs >= 32),
    weights re-drawn with std 0.1 so that greedy output varies from token to token."""
    model, tok = tiny_llama(out_dir, hidden=128)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.1)
    model.save_pretrained(out_dir, safe_serialization=True)
    return model, tok


def tiny_t5(out_dir: Path, seed: int = 0):
    """A random T5ForConditionalGeneration with the same tokenizer, saved to `out_dir`."""
    from transformers import T5Config, T5ForConditionalGeneration

    out_dir = Path(out_dir)
    tok = build_tokenizer(out_dir)
    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=len(tok), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
        num_heads=4, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    model = T5ForConditionalGeneration(cfg).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    return model, tok


def random_adapter(base_model, out_dir: Path, rank: int = 4, alpha: int | None = None,
                   target_modules=("q_proj", "v_proj"), seed: int = 0, scale: float = 0.5,
                   base_name: str | None = None) -> Path:
    """Save a PEFT LoRA with random non-zero A and B (B is zero at PEFT's init) to `out_dir`."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, target_modules=list(target_modules),
                     lora_dropout=0.0, bias="none")
    peft_model = get_peft_model(base_model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn_like(p) * scale / max(p.shape[-1], 1) ** 0.5)
    if base_name is not None:
        peft_model.peft_config["default"].base_model_name_or_path = base_name
    peft_model.save_pretrained(out_dir, safe_serialization=True)
    peft_model.unload()
    return Path(out_dir)


def peft_weighted_adapter(base_model, adapters: dict[str, Path], weights, spec, name: str = "merged"):
    """PEFT's own `add_weighted_adapter` of `adapters` (name -> PEFT folder, in that order) with
    `weights` and `spec` (a `MergeSpec`), torch's CPU generator seeded with `spec.seed` at the start
    of PEFT's merge loop (after the new adapter's random init has drawn): the oracle of
    `engine/merge.py`. Returns the PeftModel (it wraps `base_model` in place; `.unload()` undoes
    it) with adapter `name` active, and layer -> (A [r, d_in], B [d_out, r]) of that adapter."""
    from unittest import mock

    from peft import PeftModel
    from peft.tuners.lora import LoraLayer, LoraModel

    from lorahub_serve.formats import PEFT_PREFIX

    names = list(adapters)
    net = PeftModel.from_pretrained(base_model, adapters[names[0]], adapter_name=names[0])
    for n in names[1:]:
        net.load_adapter(adapters[n], adapter_name=n)
    merge_one = LoraModel._generalized_task_arithmetic_weighted_adapter
    seeded = []

    def seed_first(self, *args, **kwargs):
        if not seeded:
            torch.manual_seed(spec.seed or 0)
            seeded.append(True)
        return merge_one(self, *args, **kwargs)

    with torch.random.fork_rng(devices=[]), \
            mock.patch.object(LoraModel, "_generalized_task_arithmetic_weighted_adapter", seed_first):
        net.add_weighted_adapter(names, [float(w) for w in weights], name, combination_type=spec.rule,
                                 density=spec.density,
                                 majority_sign_method=spec.majority_sign_method or "total")
    net.set_adapter(name)
    factors = {key.removeprefix(PEFT_PREFIX): (m.lora_A[name].weight.detach().clone(),
                                               m.lora_B[name].weight.detach().clone())
               for key, m in net.named_modules() if isinstance(m, LoraLayer) and name in m.lora_A}
    return net, factors


def random_hub(base_model, hub_dir: Path, n: int = 4, ranks=(4,), target_modules=("q_proj", "v_proj"),
               base_name: str = "tiny", scale: float = 0.5) -> Path:
    """A hub folder (`hub.json` + modules/) of `n` random adapters; ranks cycle through `ranks`."""
    from lorahub_serve.formats import ADAPTER_WEIGHTS, HUB_FORMAT, write_hub_json
    from lorahub_serve.hub.build import sha256_file

    hub_dir = Path(hub_dir)
    modules = []
    for i in range(n):
        name = f"task{i}"
        r = ranks[i % len(ranks)]
        path = random_adapter(base_model, hub_dir / "modules" / name, rank=r, seed=100 + i,
                              target_modules=target_modules, scale=scale)
        modules.append({"name": name, "path": f"modules/{name}", "source_task": name, "rank": r,
                        "alpha": 2 * r, "target_modules": list(target_modules),
                        "sha256": sha256_file(path / ADAPTER_WEIGHTS)})
    write_hub_json(hub_dir, {"format": HUB_FORMAT, "base_model": base_name, "modules": modules})
    return hub_dir


def reference_loss(model, tokenizer, examples) -> float:
    """HF's own loss (token mean over the outputs) for `examples` in one padded batch: the oracle
    that the engine's batched losses are checked against."""
    from lorahub_serve.data.examples import from_records
    from lorahub_serve.prompting import (
        IGNORE,
        causal_batch,
        encode_example,
        encode_seq2seq,
        pad_id,
        pad_rows,
    )

    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    enc = [(encode_seq2seq if seq2seq else encode_example)(tokenizer, e) for e in from_records(examples)]
    pad = pad_id(tokenizer)
    if seq2seq:
        ids = pad_rows([e.prompt_ids for e in enc], pad)
        mask = pad_rows([[1] * len(e.prompt_ids) for e in enc], 0)
        labels = pad_rows([e.target_ids for e in enc], IGNORE)
    else:
        ids, mask, labels = causal_batch([(e.prompt_ids, e.target_ids) for e in enc], pad)
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()


def greedy_ids(model, ids: list[int], new_tokens: int, adapter: Path | None = None) -> list[int]:
    """Greedy continuation of `ids` with transformers, no EOS stop: `new_tokens` ids. `adapter`:
    a PEFT folder applied for the call (and unloaded after); `model` may also be a PeftModel
    used as it stands. The reference the serving tests hold vLLM's output against."""
    from peft import PeftModel

    net = PeftModel.from_pretrained(model, str(adapter)).eval() if adapter else model
    seq = torch.tensor([ids])
    with torch.inference_mode():
        for _ in range(new_tokens):
            seq = torch.cat([seq, net(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    if adapter:
        net.unload()
    return seq[0, len(ids):].tolist()


def one_task_suite(base_model, folder: Path, task: str, closeness: str = "far", majority: float = 0.0) -> Path:
    """A headroom-suite manifest keeping one generative `task`, with a random oracle adapter
    (`eval --suite headroom` tests); returns the manifest's path."""
    import json

    oracle = Path(folder) / "oracles"
    random_adapter(base_model, oracle / "modules" / task.replace("/", "__"))
    suite = Path(folder) / "suite.json"
    suite.write_text(json.dumps({
        "tasks": [task], "oracle_hub": str(oracle),
        "candidates": [{"task": task, "metric": "em", "closeness": closeness, "chance": 0.0,
                        "majority": majority}]}))
    return suite
