"""Greedy generation with many compositions in one batch (evaluation without a server).

Each prompt row names its candidate; the attached multi-candidate LoRA layers apply that
candidate's composition, so zero-shot (all-zero weights), LoraHub and single-module answers
for many examples come out of the same batched `generate` calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lorahub_serve.engine.evaluator import Evaluator
from lorahub_serve.prompting import pad_id, pad_rows, prompt_ids


@torch.inference_mode()
def generate(ev: Evaluator, prompts: Sequence[str], cands: Sequence[int], module_idx: np.ndarray,
             weights: np.ndarray, max_new_tokens: int = 16, batch_size: int = 32) -> list[str]:
    """Greedy continuation of each prompt under composition `cands[i]` of (module_idx, weights).

    module_idx, weights: [C, K]; cands: [len(prompts)] in [0, C). Returns decoded texts
    (special tokens dropped, cut at EOS).
    """
    tok, model = ev.tokenizer, ev.model
    n_cand = len(weights)
    if len(cands) != len(prompts) or any(not 0 <= c < n_cand for c in cands):
        raise ValueError(f"cands must give each of the {len(prompts)} prompts a candidate in [0, {n_cand})")
    enc = [prompt_ids(tok, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(enc[i]))  # similar lengths together
    out: list[str] = [""] * len(prompts)
    pad = pad_id(tok)
    with ev.handle.route(module_idx, weights) as routing:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            ids = pad_rows([enc[i] for i in rows], pad, left=True)  # every prompt ends at the last column
            mask = pad_rows([[1] * len(enc[i]) for i in rows], 0, left=True)
            width = ids.shape[1]
            routing.row_cand = torch.tensor([cands[i] for i in rows], device=ev.device)
            gen = model.generate(input_ids=ids.to(ev.device), attention_mask=mask.to(ev.device),
                                 max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                 eos_token_id=tok.eos_token_id)
            for i, row in zip(rows, gen[:, width:].tolist()):
                if tok.eos_token_id in row:
                    row = row[: row.index(tok.eos_token_id)]
                out[i] = tok.decode(row, skip_special_tokens=True)
    return out
