"""Export a composition as a standard PEFT LoRA adapter folder (+ `lorahub.json`).

rule "lorahub": A = Σ wₖAₖ, B = Σ wₖsₖBₖ — an ordinary LoRA of rank max rₖ (scaling folded, alpha = r).
rule "linear":  A = [A₁; …; A_K], B = [w₁s₁B₁ … w_Ks_KB_K] — a LoRA of rank Σ rₖ with ΔW = Σ wₖsₖBₖAₖ.
rules "ties", "dare_linear", "dare_ties", "magnitude_prune": PEFT's merges of modules of one rank
  r (`engine/merge.py`: A' = f([Aₖ], √|wₖsₖ|·sign), B' = f([Bₖ], √|wₖsₖ|)), rank r; their
  parameters (density, majority_sign_method, seed) travel in a `MergeSpec`. Export and serving
  only: the search composes with "lorahub" or "linear".
Per-layer-group weights ([G, K], `layer_groups`): each layer composes with its group's row, so
the result is still one ordinary PEFT LoRA (lorahub and linear rules; PEFT's merges take [K]).
`composed_rank` is that rank, the one definition export, evaluation and serving use: in a hub of
mixed ranks the stack is zero-padded to the largest, and the factors are trimmed back to it here.
Folders are written atomically (temporary sibling, then rename).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from lorahub_serve.atomic import atomic_dir
from lorahub_serve.choices import EXPORT_RULES
from lorahub_serve.engine.hub import HubStack
from lorahub_serve.engine.layer_groups import layer_groups
from lorahub_serve.engine.merge import MergeSpec, as_spec, common_rank, merge_factors
from lorahub_serve.formats import ADAPTER_WEIGHTS, peft_key, write_lorahub_json


def check_rule(rule: str) -> str:
    """`rule` if it is a composition rule (see the module docstring), else a ValueError."""
    if rule not in EXPORT_RULES:
        raise ValueError(f"rule must be one of {', '.join(EXPORT_RULES)}; got {rule!r}")
    return rule


def composed_rank(ranks: Sequence[int], rule: str | MergeSpec) -> int:
    """Rank of the adapter composing modules of ranks `ranks` under `rule` (see the module
    docstring): the largest for "lorahub", their sum for "linear", their one rank for PEFT's
    merges (a ValueError naming the ranks when they differ)."""
    rule = check_rule(rule.rule if isinstance(rule, MergeSpec) else rule)
    if not ranks:
        raise ValueError("composed_rank: no modules (ranks is empty)")
    if rule == "lorahub":
        return max(ranks)
    return sum(ranks) if rule == "linear" else common_rank(list(ranks), rule)


def compose_factors(stack: HubStack, module_idx: list[int], weights, rule: str | MergeSpec, *,
                    model: torch.nn.Module | None = None,
                    allow_pickle: bool = False) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """layer -> (A [r', d_in], B [d_out, r']) of the composed adapter (scaling folded into B),
    r' = `composed_rank` of the modules `module_idx` [K] of `stack`, weighted by `weights` [K]
    (or [G, K]: each layer by its group's row, `layer_groups`). PEFT's merges (a `MergeSpec` or a rule name, with defaults) read the modules' own files and
    need the base `model` (its layer order is PEFT's; `engine/merge.py`)."""
    spec = as_spec(rule)
    w_all = torch.as_tensor(weights, dtype=torch.float32)
    if w_all.ndim == 2 and spec.is_merge:
        raise ValueError(f"export rule {spec.rule!r} merges global weights [K]; per-layer-group weights "
                         "[G, K] export with rule lorahub or linear")
    group = layer_groups(stack.layers, w_all.shape[0]) if w_all.ndim == 2 else None
    if spec.is_merge:
        if model is None:
            raise ValueError(f"compose_factors: rule {spec.rule!r} needs the base model (model=...)")
        return merge_factors(model, [stack.modules[i] for i in module_idx], weights, spec, allow_pickle)
    rule = spec.rule
    ranks = [stack.modules[i].rank for i in module_idx]
    r = composed_rank(ranks, rule)
    idx = torch.as_tensor(module_idx, dtype=torch.long)
    out = {}
    for layer in stack.layers:
        a, b = stack.lora_a[layer][idx].float(), stack.lora_b[layer][idx].float()  # [K,r_max,d_in], [K,d_out,r_max]
        w = (w_all if group is None else w_all[group[layer]]).to(a.device)
        if rule == "lorahub":  # rows past the largest chosen rank are zero padding in every module
            out[layer] = (torch.einsum("k,krd->rd", w, a[:, :r]), torch.einsum("k,kor->or", w, b[:, :, :r]))
        else:  # linear: each module's own rows, without its padding
            out[layer] = (torch.cat([a[k, :rk] for k, rk in enumerate(ranks)]),
                          torch.cat([w[k] * b[k, :, :rk] for k, rk in enumerate(ranks)], dim=1))
    return out


def write_adapter(out_dir: Path, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], base_model: str,
                  metadata: dict | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Write a PEFT adapter folder (adapter_config.json, adapter_model.safetensors[, lorahub.json])."""
    from peft import LoraConfig

    rank = next(iter(factors.values()))[0].shape[0]
    targets = sorted({layer.rsplit(".", 1)[-1] for layer in factors})
    tensors = {}
    for layer, (a, b) in factors.items():
        tensors[peft_key(layer, "A")] = a.to(dtype).contiguous()
        tensors[peft_key(layer, "B")] = b.to(dtype).contiguous()
    cfg = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, lora_dropout=0.0, bias="none",
                     base_model_name_or_path=base_model)
    with atomic_dir(Path(out_dir)) as tmp:
        cfg.save_pretrained(tmp)
        save_file(tensors, tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        if metadata is not None:
            write_lorahub_json(tmp, metadata)
    return Path(out_dir)


def merge_adapter(base_folder: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """Write base + adapter merged into one full model folder (served without LoRA)."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    config = AutoConfig.from_pretrained(base_folder)
    cls = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    model = cls.from_pretrained(base_folder, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    with atomic_dir(Path(out_dir)) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(base_folder).save_pretrained(tmp)
    return Path(out_dir)
