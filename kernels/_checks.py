"""Input checks for the launchers and lora_delta.

Each error names the op, the parameter, the value received and what was expected. Shape,
dtype and device checks cost nothing; the index range checks read two numbers back from the
device (a sync on CUDA), so callers that validated a batch once may skip them per layer with
`check_indices=False`.
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def tensor(op: str, name: str, t, layout: str, dtypes, device: torch.device | None = None):
    """Check that `t` is a tensor with len(layout) dims, a dtype in `dtypes`, on `device`."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor {layout}; got {type(t).__name__}")
    ndim = layout.count(",") + 1
    if t.dim() != ndim:
        raise ValueError(
            f"{op}: {name} must be {ndim}-D {layout}; got shape {tuple(t.shape)}"
        )
    if t.dtype not in dtypes:
        names = " or ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(
            f"{op}: {name} must have dtype {names}; got {str(t.dtype).replace('torch.', '')} "
            f"(convert it with .to(...))"
        )
    if device is not None and t.device != device:
        raise ValueError(
            f"{op}: {name} is on {t.device} but x is on {device}; "
            f"move it with .to({str(device)!r})"
        )


def dim(op: str, name: str, t: torch.Tensor, axis: int, expected: int, what: str):
    """Check t.shape[axis] == expected, where `what` says where `expected` came from."""
    if t.shape[axis] != expected:
        raise ValueError(
            f"{op}: {name}.shape[{axis}] must equal {what} = {expected}; "
            f"got {name}.shape = {tuple(t.shape)}"
        )


def index_range(op: str, name: str, t: torch.Tensor, upper: int, what: str):
    """Check every value of the integer tensor `t` lies in [0, upper)."""
    if t.numel() == 0:
        return
    bad = (t < 0) | (t >= upper)
    if bool(bad.any()):
        pos = tuple(int(i) for i in bad.nonzero()[0])
        raise IndexError(
            f"{op}: {name} values must lie in [0, {upper}) ({what}); "
            f"got {name}[{', '.join(map(str, pos))}] = {int(t[pos])}"
        )


def routing(op, module_idx, weights, row_cand, *, n_modules, batch, device, check_indices):
    """Check module_idx [C, K] int64, weights [C, K] fp32 (None: not used), row_cand [B] int64."""
    tensor(op, "module_idx", module_idx, "[C, K]", (torch.int64,), device)
    tensor(op, "row_cand", row_cand, "[B]", (torch.int64,), device)
    c, k = module_idx.shape
    if c < 1 or k < 1:
        raise ValueError(
            f"{op}: module_idx must have at least one candidate and one module; "
            f"got shape {tuple(module_idx.shape)}"
        )
    if weights is not None:
        tensor(op, "weights", weights, "[C, K]", (torch.float32,), device)
        if weights.shape != module_idx.shape:
            raise ValueError(
                f"{op}: weights must have the shape of module_idx {tuple(module_idx.shape)}; "
                f"got {tuple(weights.shape)}"
            )
    dim(op, "row_cand", row_cand, 0, batch, "the batch size x.shape[0]")
    if check_indices:
        index_range(op, "module_idx", module_idx, n_modules, "the hub's N modules")
        index_range(op, "row_cand", row_cand, c, "the C candidates of module_idx")


def factors_a(op: str, x: torch.Tensor, lora_a: torch.Tensor) -> None:
    """Check x [B, T, d_in] and lora_a [N, r, d_in] (floating, same device)."""
    tensor(op, "x", x, "[B, T, d_in]", FLOAT_DTYPES)
    tensor(op, "lora_a", lora_a, "[N, r, d_in]", FLOAT_DTYPES, x.device)
    dim(op, "lora_a", lora_a, 2, x.shape[2], "d_in = x.shape[2]")
    if lora_a.shape[0] < 1 or lora_a.shape[1] < 1:
        raise ValueError(f"{op}: lora_a needs N >= 1 and r >= 1; got {tuple(lora_a.shape)}")


def factors_b(op: str, lora_b: torch.Tensor, r: int | None, device: torch.device) -> None:
    """Check lora_b [N, d_out, r] (floating, on `device`); r=None: any rank >= 1."""
    tensor(op, "lora_b", lora_b, "[N, d_out, r]", FLOAT_DTYPES, device)
    if r is not None:
        dim(op, "lora_b", lora_b, 2, r, "the rank r of lora_a")
    if lora_b.shape[0] < 1 or lora_b.shape[2] < 1:
        raise ValueError(f"{op}: lora_b needs N >= 1 and r >= 1; got {tuple(lora_b.shape)}")


def expand_io(op, h, y, lora_b, width: int, width_what: str) -> None:
    """Check h [B, T, width] and y [B, T, d_out] (h and lora_b checked as tensors before)."""
    dim(op, "h", h, 2, width, width_what)
    tensor(op, "y", y, "[B, T, d_out]", FLOAT_DTYPES, h.device)
    dim(op, "y", y, 0, h.shape[0], "B = h.shape[0]")
    dim(op, "y", y, 1, h.shape[1], "T = h.shape[1]")
    dim(op, "y", y, 2, lora_b.shape[1], "d_out = lora_b.shape[1]")
