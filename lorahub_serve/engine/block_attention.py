"""Attention for packed rows, block by block: each example attends to the shared prefix and itself.

A packed row (see `packing`) holds a task's shared prefix once, then each example's suffix; a
dense [L, L] mask keeps the examples apart. Run that way, attention scores all L² pairs of the
row although an example sees only the prefix and its own tokens, and CPU SDPA with a float mask
is a slow path. Here each (row, example) pair becomes one block [prefix; example], gathered from
the row, and attention runs per block under a plain causal mask: exact (a prefix token sees the
prefix, an example token the prefix and its own earlier tokens, as under the dense mask) with
E·(P + Lₑ)² score entries instead of (P + ΣLₑ)², and no mask to build or read. The outputs are
gathered back into row order; the prefix's output is taken from the row's first block.

`Blocks` is built per micro-batch from the rows' layouts (`Blocks.of`), passed to the model's
forward as the keyword `lorahub_blocks`, and reaches every attention layer through transformers'
attention interface (`AttentionInterface`), while `using_blocks(model)` has the model dispatch to
it. Models whose attention does more than causal softmax(QKᵀ·s)V (logit soft-capping,
bidirectional attention) keep the dense mask (`supports_blocks`). Sliding-window layers (Gemma 3,
windowed Qwen2) see at most `attention_window(config)` tokens, themselves included: a block no
wider than the window is seen whole there too, so blocks stay exact while every block of a
micro-batch fits (`fits_window`); the evaluator gives the others the dense mask, windowed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

NAME = "lorahub_blocks"


@dataclass(frozen=True)
class Blocks:
    """Where a micro-batch's blocks come from and where their outputs go.

    src [NB, W]: flat index (row·width + position) of each block token (padding: 0, never seen
    by a real query, which attends only to earlier tokens of its block); dst [B·width]: flat index
    (block·W + offset) of the block output that is each row position's output.
    """

    src: torch.Tensor
    dst: torch.Tensor

    @property
    def width(self) -> int:
        return self.src.shape[1]

    @staticmethod
    def of(layouts: Sequence[tuple[int, torch.Tensor, torch.Tensor]], width: int, device) -> Blocks:
        """layouts: per segment of the micro-batch (n rows of one packed row), (n, members, block_of)
        where members [S, Wr] holds each block's row positions (-1: padding) and block_of [L] the
        (block, offset) of each row position, flattened as block·Wr + offset. width: the micro-batch's
        padded row length."""
        w = max(m.shape[1] for _, m, _ in layouts)
        src, dst, rows, blocks = [], [], 0, 0
        for n, members, block_of in layouts:
            s, wr = members.shape
            row = torch.arange(rows, rows + n, device=device)
            m = F.pad(members, (0, w - wr), value=-1)  # [S, W]
            flat = (row[:, None, None] * width + m.clamp(min=0)).masked_fill(m < 0, 0)
            src.append(flat.reshape(n * s, w))
            blk, off = block_of // wr, block_of % wr
            out = (blocks + torch.arange(n, device=device)[:, None] * s + blk) * w + off  # [n, L]
            dst.append(F.pad(out, (0, width - out.shape[1]), value=0))
            rows, blocks = rows + n, blocks + n * s
        return Blocks(torch.cat(src), torch.cat(dst).reshape(-1))


def attention_window(config) -> int | None:
    """Tokens a query of the model's sliding-window layers sees, itself included (transformers'
    `sliding_window`: query q sees key k when q - window < k <= q); None when no layer slides
    (Llama; Qwen2 keeps a window it does not use)."""
    window = getattr(config, "sliding_window", None)
    if window is None or not getattr(config, "use_sliding_window", True):
        return None
    types = getattr(config, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return None
    return int(window)


def supports_blocks(model) -> bool:
    """Whether `model`'s attention layers can run blocks: transformers' attention interface, and
    nothing beyond causal softmax attention (a sliding window is checked per micro-batch:
    `fits_window`)."""
    config = model.config
    return (bool(getattr(model, "_supports_attention_backend", False))
            and not getattr(config, "is_encoder_decoder", False)
            and not getattr(config, "use_bidirectional_attention", False)
            and getattr(config, "attn_logit_softcapping", None) is None)


def fits_window(block_widths, window: int | None) -> bool:
    """Whether blocks of these widths (tokens: a row's prefix and its longest example) are exact
    under a sliding window of `window` tokens: a block no wider than the window is seen whole by
    its last query, as under the dense windowed mask."""
    return window is None or max(block_widths, default=0) <= window


@contextmanager
def using_blocks(model) -> Iterator[None]:
    """Dispatch the model's attention to `block_attention` while the block runs. Under this name
    transformers builds no mask (it knows no mask function for it): the blocks replace it."""
    _register()
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before


def block_attention(module, query, key, value, attention_mask, scaling: float | None = None,
                    dropout: float = 0.0, lorahub_blocks: Blocks | None = None, kernel=None, **kwargs):
    """transformers attention function: query [B, H, T, D], key/value [B, Hkv, T, D] → ([B, T, H, D],
    None). Without blocks (a forward that passed none), plain causal SDPA. kernel: `causal_sdpa`
    or `causal_matmul` (None: SDPA on CUDA, matmuls on CPU)."""
    b, h, t, d = query.shape
    hkv = key.shape[1]
    scaling = d ** -0.5 if scaling is None else scaling
    if lorahub_blocks is None:
        if attention_mask is not None:
            raise ValueError(f"{NAME} attention got a mask and no blocks; use the model's own attention")
        out = F.scaled_dot_product_attention(query, key, value, is_causal=t > 1, scale=scaling,
                                             enable_gqa=hkv != h)
        return out.transpose(1, 2).contiguous(), None
    src = lorahub_blocks.src

    def gather(x, heads):  # [B, heads, T, D] -> [NB, heads, W, D]
        return x.transpose(1, 2).reshape(b * t, heads, d)[src].transpose(1, 2)

    q, k, v = gather(query, h), gather(key, hkv), gather(value, hkv)
    kernel = kernel or (causal_sdpa if query.is_cuda else causal_matmul)
    out = kernel(q, k, v, scaling).transpose(1, 2).flatten(0, 1)[lorahub_blocks.dst]  # [B·T, H, D]
    return out.view(b, t, h, d), None


def causal_sdpa(q, k, v, scaling: float):
    """Causal attention per block with SDPA (flash attention on CUDA). q [NB, H, W, D], k/v
    [NB, Hkv, W, D] -> [NB, H, W, D]."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling,
                                          enable_gqa=k.shape[1] != q.shape[1])


def causal_matmul(q, k, v, scaling: float):
    """The same with batched matmuls: CPU SDPA is slow at block sizes. Scores per kv head with its
    g query heads stacked, in fp32 (bf16 scores moved some losses by 10 %; attention is a small
    share of the FLOPs)."""
    nb, h, w, d = q.shape
    hkv = k.shape[1]
    g = h // hkv
    causal = torch.ones(w, w, dtype=torch.bool, device=q.device).tril()
    neg = torch.zeros(w, w, device=q.device).masked_fill_(~causal, float("-inf"))
    scores = torch.baddbmm(neg.repeat(g, 1).expand(nb * hkv, g * w, w), q.reshape(nb * hkv, g * w, d).float(),
                           k.reshape(nb * hkv, w, d).float().transpose(1, 2), alpha=scaling)
    probs = torch.softmax(scores, dim=-1)
    return torch.bmm(probs, v.reshape(nb * hkv, w, d).float()).to(v.dtype).view(nb, h, w, d)


def _register() -> None:
    from transformers import AttentionInterface

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, block_attention)
