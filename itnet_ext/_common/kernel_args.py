"""The kernel terms' checks (docs/design.md section 1), shared by the dense and the sparse
op and by their oracles, so that all of them reject the same inputs with the same messages.

``check_inputs`` takes exactly the arguments of ``integral_transform`` and
either raises ``ValueError`` with a message naming the offending argument and
what was expected, or returns a :class:`Problem` describing the normalized
problem (sizes, enabled terms, resolved scale, parsed window, offset-table
strides).  Tensors are not modified or copied.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .checks import (NORMALIZATIONS, Window, _is_number, _require_dim, _require_tensor, _shape,
                     normalize_window, offset_layout)
from .names import ACTIVATIONS

__all__ = ["Problem", "check_inputs"]


@dataclass(frozen=True)
class Problem:
    """Normalized description of one ``integral_transform`` call."""

    B: int
    H: int
    N: int
    M: int
    Dk: int                 # 0 when the content term is disabled
    Dv: int
    R: int                  # 0 when the MLP term is disabled
    D: int                  # position dims (1 when positions default to arange)
    content: bool           # q.k term enabled
    mlp: bool               # MLP term enabled
    scale: float            # resolved content scale (1/sqrt(Dk) by default; 1.0 if no content term)
    activation: str
    normalize: str
    causal: bool
    window: Optional[Window]               # ((lo, hi), ...) of length D, floats; None = no window
    offset_sizes: Optional[Tuple[int, ...]]    # hi_d - lo_d + 1 per dim (only with offset_table)
    offset_strides: Optional[Tuple[int, ...]]  # row-major, last dim fastest (only with offset_table)
    offset_volume: int                      # prod(offset_sizes); 0 without offset_table
    attn_mask_kind: Optional[str]          # None, "bool" or "float"
    needs_positions: bool                  # window or offset_table given
    dtype: torch.dtype                     # v.dtype (output dtype)
    device: torch.device                   # v.device




def check_inputs(
    q=None, k=None, v=None, *,
    u=None, t=None, W2=None, b2=None,
    activation="gelu",
    offset_table=None,
    q_pos=None, k_pos=None,
    normalize="softmax",
    key_weight=None,
    causal=False,
    window=None,
    key_padding_mask=None,
    attn_mask=None,
    scale=None,
    return_lse=False,
    check_values: bool = True,
    n_queries=None,
) -> Problem:
    """Validate the arguments of ``integral_transform`` and return a :class:`Problem`.

    ``check_values=False`` skips the data-dependent checks (NaN / integer-valued
    positions, key_weight > 0), which need a device sync. ``n_queries``: the number of
    queries N when the caller knows it from elsewhere (the sparse op's pair list) and none
    of q, u, q_pos gives it; those, when given, are still checked against each other.
    """
    # ---- v: defines B, H, M, Dv, dtype, device -------------------------------------------
    if v is None:
        raise ValueError("v: is required, expected a 4-D tensor (B, H, M, Dv), got None")
    _require_tensor("v", v, 4, "(B, H, M, Dv)")
    if not v.is_floating_point():
        raise ValueError(f"v: expected a floating-point tensor, got dtype {v.dtype}")
    B, H, M, Dv = v.shape
    dtype, device = v.dtype, v.device

    def same_dtype_device(name, x):
        if x.device != device:
            raise ValueError(
                f"{name}: expected all tensors on the same device as v ({device}), got {x.device}")
        if x.dtype != dtype:
            raise ValueError(f"{name}: expected dtype {dtype} (same as v), got {x.dtype}")

    def same_device(name, x):
        if x.device != device:
            raise ValueError(
                f"{name}: expected all tensors on the same device as v ({device}), got {x.device}")

    # ---- string / flag options ---------------------------------------------------------------
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize: expected one of {NORMALIZATIONS}, got {normalize!r}")
    if return_lse and normalize == "none":
        raise ValueError('return_lse: lse is only defined for normalize="softmax", '
                         'got normalize="none"')
    if not isinstance(causal, (bool, int)) or isinstance(causal, torch.Tensor):
        raise ValueError(f"causal: expected a bool, got {type(causal).__name__}")

    # ---- content term --------------------------------------------------------------------------
    if (q is None) != (k is None):
        missing, given = ("k", "q") if k is None else ("q", "k")
        raise ValueError(
            f"{missing}: the content term needs both q and k; {given} was given but {missing} is None")
    content = q is not None
    N = None
    Dk = 0
    if content:
        _require_tensor("q", q, 4, "(B, H, N, Dk)")
        _require_tensor("k", k, 4, "(B, H, M, Dk)")
        same_dtype_device("q", q)
        same_dtype_device("k", k)
        _require_dim("q", q, 0, B, "B (from v)", "(B, H, N, Dk)")
        _require_dim("q", q, 1, H, "H (from v)", "(B, H, N, Dk)")
        _require_dim("k", k, 0, B, "B (from v)", "(B, H, M, Dk)")
        _require_dim("k", k, 1, H, "H (from v)", "(B, H, M, Dk)")
        _require_dim("k", k, 2, M, "M (from v)", "(B, H, M, Dk)")
        N, Dk = q.shape[2], q.shape[3]
        _require_dim("k", k, 3, Dk, "Dk (from q)", "(B, H, M, Dk)")
    if scale is None:
        res_scale = 1.0 / math.sqrt(Dk) if (content and Dk > 0) else 1.0
    else:
        if not _is_number(scale):
            raise ValueError(f"scale: expected a real number or None, got {type(scale).__name__}")
        res_scale = float(scale)
        if math.isnan(res_scale):
            raise ValueError("scale: expected a real number, got NaN")

    # ---- MLP term ------------------------------------------------------------------------------
    mlp = W2 is not None
    R = 0
    if not mlp:
        for name, x in (("u", u), ("t", t), ("b2", b2), ("offset_table", offset_table)):
            if x is not None:
                raise ValueError(
                    f"{name}: is part of the MLP term, which is enabled only when W2 (H, R) is given; "
                    f"W2 is None")
    else:
        _require_tensor("W2", W2, 2, "(H, R)")
        same_dtype_device("W2", W2)
        _require_dim("W2", W2, 0, H, "H (from v)", "(H, R)")
        R = W2.shape[1]
        if b2 is not None:
            _require_tensor("b2", b2, 1, "(H,)")
            same_dtype_device("b2", b2)
            _require_dim("b2", b2, 0, H, "H (from v)", "(H,)")
        if u is not None:
            _require_tensor("u", u, 3, "(B or 1, N, R)")
            same_dtype_device("u", u)
            _require_dim("u", u, 0, B, "B (from v)", "(B or 1, N, R)", allow_one=True)
            if N is not None:
                _require_dim("u", u, 1, N, "N (from q)", "(B or 1, N, R)")
            else:
                N = u.shape[1]
            _require_dim("u", u, 2, R, "R (from W2)", "(B or 1, N, R)")
        if t is not None:
            _require_tensor("t", t, 3, "(B or 1, M, R)")
            same_dtype_device("t", t)
            _require_dim("t", t, 0, B, "B (from v)", "(B or 1, M, R)", allow_one=True)
            _require_dim("t", t, 1, M, "M (from v)", "(B or 1, M, R)")
            _require_dim("t", t, 2, R, "R (from W2)", "(B or 1, M, R)")
        if offset_table is not None:
            _require_tensor("offset_table", offset_table, 2, "(O, R)")
            same_dtype_device("offset_table", offset_table)
            _require_dim("offset_table", offset_table, 1, R, "R (from W2)", "(O, R)")
    if not content and not mlp:
        raise ValueError(
            "integral_transform: no term enabled; pass q and k (content term) and/or W2 (MLP term)")

    # ---- positions -----------------------------------------------------------------------------
    D = None
    for name, x, L, n_label in (("q_pos", q_pos, "(B or 1, N, D)", "N"),
                                ("k_pos", k_pos, "(B or 1, M, D)", "M")):
        if x is None:
            continue
        _require_tensor(name, x, 3, L)
        same_device(name, x)
        if not x.is_floating_point():
            raise ValueError(f"{name}: expected a floating-point tensor {L}, got dtype {x.dtype}")
        _require_dim(name, x, 0, B, "B (from v)", L, allow_one=True)
        if name == "q_pos":
            if N is not None:
                _require_dim(name, x, 1, N, "N (from q or u)", L)
            else:
                N = x.shape[1]
        else:
            _require_dim(name, x, 1, M, "M (from v)", L)
        if D is None:
            D = x.shape[2]
        elif x.shape[2] != D:
            raise ValueError(
                f"k_pos: expected shape (B or 1, M, D) with D = {D} (from q_pos), got shape {_shape(x)}")
    if N is None:
        N = n_queries
    if N is None:
        raise ValueError("integral_transform: cannot determine N (number of queries); "
                         "pass q, u or q_pos")
    if D is None:
        D = 1
    elif (q_pos is None) != (k_pos is None) and D != 1:
        given, missing = ("q_pos", "k_pos") if k_pos is None else ("k_pos", "q_pos")
        raise ValueError(
            f"{missing}: defaults to arange with D = 1, but {given} has D = {D}; pass both")
    if D == 0:
        raise ValueError("q_pos: expected D >= 1 position dims, got D = 0")

    # ---- window / offset table -----------------------------------------------------------------
    win = normalize_window(window, D)
    offset_sizes = offset_strides = None
    offset_volume = 0
    if offset_table is not None:
        if win is None:
            raise ValueError("offset_table: requires a window (integer bounds) defining the offset box")
        offset_sizes, offset_strides, offset_volume = offset_layout(win)
        if offset_table.shape[0] < offset_volume:
            raise ValueError(
                f"offset_table: expected at least {offset_volume} rows (window volume "
                f"{' x '.join(str(s) for s in offset_sizes)}), got shape {_shape(offset_table)}")
    needs_positions = win is not None

    if check_values:
        for name, x in (("q_pos", q_pos), ("k_pos", k_pos)):
            if x is None or x.numel() == 0:
                continue
            # (an inf position would make the offset inf - inf = NaN: the rule is finite ones)
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"{name}: contains NaN or inf (positions must be finite)")
            if offset_table is not None:
                if not bool((x == torch.round(x)).all()):  # (finite: checked above)
                    raise ValueError(
                        f"{name}: offset_table requires integer-valued positions, "
                        f"got non-integer values")

    # ---- key weights ---------------------------------------------------------------------------
    if key_weight is not None:
        _require_tensor("key_weight", key_weight, 2, "(B or 1, M)")
        same_dtype_device("key_weight", key_weight)
        _require_dim("key_weight", key_weight, 0, B, "B (from v)", "(B or 1, M)", allow_one=True)
        _require_dim("key_weight", key_weight, 1, M, "M (from v)", "(B or 1, M)")
        if check_values and key_weight.numel() > 0 and not bool((key_weight > 0).all()):
            raise ValueError("key_weight: expected strictly positive values (w_j > 0)")

    # ---- masks ---------------------------------------------------------------------------------
    if key_padding_mask is not None:
        _require_tensor("key_padding_mask", key_padding_mask, 2, "(B, M)")
        if key_padding_mask.dtype != torch.bool:
            raise ValueError(
                f"key_padding_mask: expected dtype torch.bool (True = padding), "
                f"got {key_padding_mask.dtype}")
        same_device("key_padding_mask", key_padding_mask)
        _require_dim("key_padding_mask", key_padding_mask, 0, B, "B (from v)", "(B, M)")
        _require_dim("key_padding_mask", key_padding_mask, 1, M, "M (from v)", "(B, M)")

    attn_mask_kind = None
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor):
            raise ValueError(f"attn_mask: expected a torch.Tensor, got {type(attn_mask).__name__}")
        target = (B, H, N, M)
        ok = 1 <= attn_mask.dim() <= 4 and all(
            s == 1 or s == T for s, T in zip(reversed(attn_mask.shape), reversed(target)))
        if not ok:
            raise ValueError(
                f"attn_mask: expected a tensor broadcastable to (B, H, N, M) = {target}, "
                f"got shape {_shape(attn_mask)}")
        same_device("attn_mask", attn_mask)
        if attn_mask.dtype == torch.bool:
            attn_mask_kind = "bool"
        elif attn_mask.is_floating_point():
            if attn_mask.dtype != dtype:
                raise ValueError(
                    f"attn_mask: expected dtype torch.bool or {dtype} (same as v), got {attn_mask.dtype}")
            attn_mask_kind = "float"
        else:
            raise ValueError(
                f"attn_mask: expected dtype torch.bool or {dtype} (same as v), got {attn_mask.dtype}")

    return Problem(
        B=B, H=H, N=N, M=M, Dk=Dk, Dv=Dv, R=R, D=D,
        content=content, mlp=mlp, scale=res_scale,
        activation=activation, normalize=normalize, causal=bool(causal),
        window=win, offset_sizes=offset_sizes, offset_strides=offset_strides,
        offset_volume=offset_volume, attn_mask_kind=attn_mask_kind,
        needs_positions=needs_positions, dtype=dtype, device=device,
    )
