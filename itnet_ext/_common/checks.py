"""Argument checks shared by every strategy's fused entry and oracle: tensor ranks and
sizes with messages that name the argument, the window forms and the offset-table box, the
normalizations and the compute dtype."""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple

import torch

NORMALIZATIONS = ("softmax", "none")

Window = Tuple[Tuple[float, float], ...]


def data_check(bad: torch.Tensor, msg: str) -> None:
    """A data-dependent check: ``bad`` (a bool tensor) any-true raises ValueError(msg) in eager
    mode; under torch.compile it is an asynchronous assert instead (no host sync, no graph
    break: a RuntimeError with msg on CPU, a device-side assert on CUDA)."""
    if torch.compiler.is_compiling():
        torch._assert_async(~bad.any(), msg)
    elif bool(bad.any()):
        raise ValueError(msg)


def values_checkable(v) -> bool:
    """Whether the data-dependent checks (NaN, positivity, integer positions: a host sync) can
    run: not under torch.compile (the op itself checks there) and not on meta tensors (no
    values; the fake kernels give the shapes)."""
    return not torch.compiler.is_compiling() and not (isinstance(v, torch.Tensor) and v.is_meta)


def check_cpu_dtype(v) -> None:
    """The dense and sparse CPU kernels compute in float32 / float64: a 16-bit v on CPU is
    refused here, before the other arguments' dtypes are compared with it (under
    torch.autocast("cpu") the layers' projections give bfloat16 while W2, u, t stay float32,
    and a message about W2 would hide the cause)."""
    from .. import emulate  # (the device emulator's CPU tensors stand for CUDA ones)
    if (isinstance(v, torch.Tensor) and v.device.type == "cpu"
            and v.dtype in (torch.float16, torch.bfloat16) and not emulate.active()):
        raise ValueError(f"v: expected dtype float32 or float64 on CPU, got {v.dtype} (float16 / "
                         "bfloat16 run on CUDA; under torch.autocast('cpu', ...) call the layer "
                         "outside the autocast region or in float32)")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64, else float32: the dtype the kernels and the oracles compute in
    (float16 / bfloat16 inputs accumulate in float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _shape(x: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in x.shape) + ")"


def _require_tensor(name: str, x, ndim: int, layout: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor of shape {layout}, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor {layout}, got shape {_shape(x)}")


def _require_dim(name: str, x: torch.Tensor, axis: int, expected: int, label: str, layout: str,
                 allow_one: bool = False) -> None:
    got = x.shape[axis]
    if got == expected or (allow_one and got == 1):
        return
    what = f"{expected} or 1" if allow_one and expected != 1 else f"{expected}"
    raise ValueError(
        f"{name}: expected shape {layout} with {label} = {what}, got shape {_shape(x)}")


def _is_number(x) -> bool:
    if isinstance(x, torch.Tensor):
        return x.dim() == 0
    return isinstance(x, numbers.Real)


def normalize_window(window, D: Optional[int] = None, *, scalar: bool = False,
                     broadcast: bool = False,
                     dim_label: str = "the position dimension D") -> Optional[Window]:
    """Parse ``window`` into a tuple of D ``(lo, hi)`` float pairs.

    Accepts None, a single pair ``(lo, hi)`` (D = 1), a sequence of pairs, or a
    tensor of shape (2,) / (D, 2).  When ``D`` is given the number of pairs must
    match it (``dim_label`` names D in that error).

    Two more forms, for the layers (``itnet_ext.nn``), are opt-in:
    ``scalar=True``: a number ``w >= 0`` means ``(-w, w)`` in each of the D dims;
    ``broadcast=True``: a single pair ``(lo, hi)`` is used for each of the D dims.
    """
    if window is None:
        return None
    if isinstance(window, torch.Tensor):
        window = window.tolist()
    n_dims = 1 if D is None else D
    if scalar and _is_number(window) and not isinstance(window, bool):
        if window < 0:
            raise ValueError(f"window: a number w means (-w, w) and must be >= 0, got {window}")
        window = [(-window, window)] * n_dims
    if isinstance(window, (str, bytes)) or not isinstance(window, Sequence):
        raise ValueError(
            f"window: expected {'a number w, ' if scalar else ''}a pair (lo, hi) or a sequence "
            f"of D pairs ((lo_0, hi_0), ...), got {type(window).__name__}")
    if len(window) == 2 and all(_is_number(w) for w in window):
        pairs = [tuple(window)] * (n_dims if broadcast else 1)
    else:
        pairs = []
        for d, p in enumerate(window):
            if isinstance(p, torch.Tensor):
                p = p.tolist()
            if (isinstance(p, (str, bytes)) or not isinstance(p, Sequence) or len(p) != 2
                    or not all(_is_number(w) for w in p)):
                raise ValueError(
                    f"window: expected a pair (lo, hi) or a sequence of D pairs ((lo_0, hi_0), ...); "
                    f"entry {d} is {p!r}")
            pairs.append(tuple(p))
    if len(pairs) == 0:
        raise ValueError("window: expected at least one (lo, hi) pair, got an empty sequence")
    out = []
    for d, (lo, hi) in enumerate(pairs):
        lo, hi = float(lo), float(hi)
        if math.isnan(lo) or math.isnan(hi):
            raise ValueError(f"window: bounds must not be NaN, got ({lo}, {hi}) for dim {d}")
        if lo > hi:
            raise ValueError(f"window: expected lo <= hi, got ({lo}, {hi}) for dim {d}")
        out.append((lo, hi))
    if D is not None and len(out) != D:
        raise ValueError(
            f"window: expected {D} (lo, hi) pair(s) to match {dim_label} = {D}, "
            f"got {len(out)}")
    return tuple(out)


def window_bounds(window: Optional[Window]):
    """(lo, hi) float lists of a parsed window (empty lists for none): the ops' arguments."""
    lo = [float(w[0]) for w in window] if window else []
    hi = [float(w[1]) for w in window] if window else []
    return lo, hi


def offset_layout(window: Window) -> Tuple[Tuple[int, ...], Tuple[int, ...], int]:
    """(sizes, strides, volume) of the offset-table box over ``window``.

    Row-major, last dim fastest: idx = sum_d (o_d - lo_d) * strides[d].
    Requires finite integer bounds.
    """
    sizes = []
    for d, (lo, hi) in enumerate(window):
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo != int(lo) or hi != int(hi):
            raise ValueError(
                f"offset_table: requires window bounds that are finite integers, "
                f"got ({lo}, {hi}) for dim {d}")
        sizes.append(int(hi) - int(lo) + 1)
    strides = [1] * len(sizes)
    for d in range(len(sizes) - 2, -1, -1):
        strides[d] = strides[d + 1] * sizes[d + 1]
    volume = 1
    for s in sizes:
        volume *= s
    return tuple(sizes), tuple(strides), volume
