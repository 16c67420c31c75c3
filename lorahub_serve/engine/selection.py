"""Which K hub modules a search composes (`adapt --select`).

- `random`: K seeded-random modules (the paper's choice, kept for comparison);
- `loss` (the default): every hub module alone at weight 1 on the few-shot examples, in batched
  passes of the evaluator, and the K with the lowest loss. Paid once: the search's start batch
  reuses the chosen K's losses (`SearchState.known_onehot`) instead of scoring them again, and
  with K >= N (every module is taken anyway) no pass runs;
- `retrieve`: the K modules whose centroid (the base model's mean final hidden state over the
  module's training inputs, stored at hub build in `centroids.safetensors`) is nearest, by
  cosine, to the few-shot inputs' centroid.
The pure rules (`lowest_k`, `nearest_k`) are apart from the model so they are tested on
synthetic losses and vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lorahub_serve.choices import SELECT_MODES

CENTROIDS_FILE = "centroids.safetensors"


def check_select(mode: str) -> str:
    if mode not in SELECT_MODES:
        raise ValueError(f"select must be one of {', '.join(SELECT_MODES)}; got {mode!r}")
    return mode


def lowest_k(losses: np.ndarray, k: int) -> list[int]:
    """Positions of the k smallest of `losses` [N], best first (ties: lower position first)."""
    losses = np.asarray(losses, dtype=np.float64)
    if not 1 <= k <= len(losses):
        raise ValueError(f"K = {k}: choose 1..{len(losses)} modules")
    if not np.all(np.isfinite(losses)):
        raise ValueError("module losses must be finite; got NaN or inf")
    return [int(i) for i in np.argsort(losses, kind="stable")[:k]]


def choose_by_loss(losses: np.ndarray, k: int) -> tuple[list[int], np.ndarray, dict]:
    """From `losses` [N] (every hub module alone): the K lowest (best first), their losses [K]
    (the search's start batch reuses them) and what lorahub.json records of the choice."""
    idx = lowest_k(losses, k)
    chosen = np.asarray(losses, dtype=np.float64)[idx]
    return idx, chosen, {"select_losses": [round(float(x), 5) for x in chosen],
                         "select_evaluations": len(losses)}


def nearest_k(centroids: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    """Positions of the k rows of `centroids` [N, d] nearest to `query` [d] by cosine, best first."""
    c = np.asarray(centroids, dtype=np.float64)
    q = np.asarray(query, dtype=np.float64)
    if c.ndim != 2 or q.shape != (c.shape[1],):
        raise ValueError(f"centroids [N, d] and query [d] expected; got {c.shape} and {q.shape}")
    if not 1 <= k <= len(c):
        raise ValueError(f"K = {k}: choose 1..{len(c)} modules")
    sim = (c @ q) / (np.linalg.norm(c, axis=1) * np.linalg.norm(q) + 1e-12)
    return [int(i) for i in np.argsort(-sim, kind="stable")[:k]]


def scores_every_module(select: str, modules: int | Sequence[str] | None, n_modules: int) -> bool:
    """Whether the choice needs the pass of every hub module alone: `loss` with K < N (named
    modules are taken as given; with K >= N every module is taken, as `random` takes them)."""
    if select != "loss" or isinstance(modules, (list, tuple)):
        return False
    from lorahub_serve.engine.hub import default_k

    k = default_k(n_modules) if modules is None else modules
    return k < n_modules


def single_losses(evaluator, task: str, n_modules: int, chunk: int = 64) -> np.ndarray:
    """[N] few-shot loss of each hub module alone at weight 1 (candidates of one module each)."""
    out = []
    for s in range(0, n_modules, chunk):
        idx = np.arange(s, min(s + chunk, n_modules))[:, None]
        out.append(evaluator.losses([task] * len(idx), idx, np.ones((len(idx), 1), dtype=np.float32)))
    return np.concatenate(out)


@torch.no_grad()
def input_centroid(net, tokenizer, texts: Sequence[str], max_length: int = 256,
                   batch_size: int = 16) -> np.ndarray:
    """[hidden]: the mean over `texts` of the mean final hidden state over each text's tokens."""
    from lorahub_serve.prompting import pad_id, pad_rows, prompt_ids

    if not texts:
        raise ValueError("a centroid needs at least one input text")
    body = getattr(net, "model", None) or net.base_model  # the decoder without its lm_head
    total, n = None, 0
    for s in range(0, len(texts), batch_size):
        rows = [prompt_ids(tokenizer, t)[-max_length:] for t in texts[s:s + batch_size]]
        ids = pad_rows(rows, pad_id(tokenizer))
        mask = pad_rows([[1] * len(r) for r in rows], 0)
        dev = next(net.parameters()).device
        hidden = body(input_ids=ids.to(dev), attention_mask=mask.to(dev)).last_hidden_state.float()
        m = mask.to(dev).unsqueeze(-1).float()
        per_text = (hidden * m).sum(1) / m.sum(1)  # [b, hidden]
        total = per_text.sum(0) if total is None else total + per_text.sum(0)
        n += len(rows)
    return (total / n).cpu().numpy()


def read_centroids(hub_dir: Path, names: Sequence[str]) -> np.ndarray:
    """[N, hidden] centroids of `names`, in order; a clear error when any is missing."""
    from safetensors.numpy import load_file

    path = Path(hub_dir) / CENTROIDS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: `--select retrieve` needs module centroids; "
                                f"run `lorahub-serve hub centroids --hub {hub_dir}`")
    table = load_file(str(path))
    missing = [n for n in names if n not in table]
    if missing:
        raise ValueError(f"{path} has no centroid for {len(missing)} modules ({', '.join(missing[:5])}…); "
                         f"run `lorahub-serve hub centroids --hub {hub_dir}`")
    return np.stack([table[n] for n in names])


def write_centroids(hub_dir: Path, table: dict[str, np.ndarray]) -> Path:
    """Merge `table` (name -> [hidden]) into the hub's centroid file (atomically)."""
    import os

    from safetensors.numpy import load_file, save_file

    path = Path(hub_dir) / CENTROIDS_FILE
    old = load_file(str(path)) if path.exists() else {}
    old.update({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in table.items()})
    tmp = path.with_suffix(".tmp")
    save_file(old, str(tmp))
    os.replace(tmp, path)
    return path
