"""Per-layer-group weights: a weight per module and per group of layers (`adapt --weights`).

`global` (G = 1, the paper's) gives every adapted layer the candidate's one weight vector w [K].
`per-layer-group:G` splits the model's blocks into G contiguous groups by depth and gives each
group its own row of a [G, K] weight matrix: the block at depth d of D (the first integer in a
layer's name, e.g. `model.layers.3.self_attn.q_proj` -> 3; T5's encoder and decoder blocks of one
index share it) is in group ⌊d·G / D⌋. The engine routes each wrapped layer to its group's row
(`multilora`), so a population of [G, K] candidates runs in the same batched pass as [K] ones,
and the export composes each layer's A, B with its group's weights (`export.compose_factors`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

GLOBAL = "global"
_PER_GROUP = re.compile(r"per-layer-group:(\d+)")


def parse_weights_spec(spec: str) -> int:
    """G of `--weights` (`global` -> 1, `per-layer-group:G` -> G); a ValueError naming the spec."""
    if spec == GLOBAL:
        return 1
    m = _PER_GROUP.fullmatch(str(spec))
    if m is None or int(m.group(1)) < 1:
        raise ValueError(f"--weights must be 'global' or 'per-layer-group:G' with an integer G >= 1 "
                         f"(e.g. per-layer-group:2), got {spec!r}")
    return int(m.group(1))


def weights_spec(groups: int) -> str:
    """The `--weights` spelling of G (inverse of `parse_weights_spec`)."""
    return GLOBAL if groups == 1 else f"per-layer-group:{groups}"


def layer_depth(name: str) -> int:
    """The block index in a layer's name: its first all-digit component."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    raise ValueError(f"layer {name!r} has no block index in its name; per-layer-group weights need "
                     "one (e.g. model.layers.3.self_attn.q_proj)")


def n_depths(layers: Sequence[str]) -> int:
    """D: the number of block depths the adapted layers span (the deepest index + 1)."""
    return max(layer_depth(n) for n in layers) + 1


def group_index(depth: int, n_depth: int, groups: int) -> int:
    """Group of the block at `depth` of `n_depth` among `groups` contiguous groups."""
    return depth * groups // n_depth


def check_groups(groups: int, n_depth: int) -> None:
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"layer groups must be an integer >= 1, got {groups!r}")
    if groups > n_depth:
        raise ValueError(f"--weights per-layer-group:{groups}: the hub adapts {n_depth} blocks, so at "
                         f"most {n_depth} groups (each group needs a block)")


def layer_groups(layers: Sequence[str], groups: int) -> dict[str, int]:
    """layer name -> its group in [0, groups)."""
    if groups == 1:
        return dict.fromkeys(layers, 0)
    d = n_depths(layers)
    check_groups(groups, d)
    return {n: group_index(layer_depth(n), d, groups) for n in layers}


def group_members(layers: Sequence[str], groups: int) -> list[list[str]]:
    """[G] the layers of each group, in order: lorahub.json's record of the grouping."""
    out: list[list[str]] = [[] for _ in range(groups)]
    for name, g in layer_groups(sorted(layers), groups).items():
        out[g].append(name)
    return out
