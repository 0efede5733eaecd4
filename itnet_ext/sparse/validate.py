"""Argument checks of the sparse (pair-list) integral transform (docs/design.md section 2, sampled).

The kernel terms are the dense op's (q, k, v, u, t, W2, b2, activation, offset_table,
q_pos, k_pos, window, normalize, scale) and are checked by ``_common.kernel_args.check_inputs``. The
support is not a mask but an explicit list of (query i, key j) pairs per batch element, in
one of two forms:

padded   ``idx`` (B, N, S) int64: the key of the s-th pair of query i;
         ``log_w`` (B, N, S) float, optional (default 0): per-pair log-weight. -inf marks
         an absent pair: its idx entry is ignored and may be -1 or any key in [0, M).
CSR      ``row_ptr`` (B, N + 1) int64: the pairs of query i of batch element b are the
         entries row_ptr[b, i] <= e < row_ptr[b, i + 1] of
         ``col_idx`` (B, E) int64 (their keys) and of
         ``log_w`` (B, E) float, optional (default 0).
         row_ptr[b, 0] = 0, non-decreasing, row_ptr[b, N] <= E: E is the largest pair
         count over the batch, and entries e >= row_ptr[b, N] are padding that is never
         read (nor checked). Inside the active range, log_w = -inf again marks an absent
         pair (whose col_idx may be -1).

Both forms: keys need not be sorted or distinct within a row; a repeated key is a separate
pair (what an importance-sampling estimator sums over). log_w must not be NaN or +inf.
log_w has v's dtype, like the dense op's key_weight; a per-key weight w_j of the dense op
folds into it as log(w_j) gathered at the listed keys.

Window: as in the dense op, the window intersects the support. A listed pair whose offset
p_j - p_i lies outside the window is excluded (counted as absent), with or without an
offset table; it is not an error. This keeps the sparse op the dense op restricted to the
listed pairs (listing every key reproduces the dense op with that window), needs no
device sync to check, and the fused kernels must test the offset anyway before indexing
the offset table.

causal / key_padding_mask / attn_mask / key_weight are not arguments: the pair list (and
log_w) is the support, and building it is the caller's (or the sampler's) business.

Bad input raises ValueError naming the argument and what was expected.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._common.checks import _require_dim, _require_tensor, _shape
from .._common.kernel_args import Problem, check_inputs


@dataclass(frozen=True)
class SparseProblem:
    """Normalized description of one ``sparse_integral_transform`` call."""

    kernel: Problem     # the dense kernel terms: sizes B, H, N, M, ..., scale, window, offsets
    form: str           # "padded" | "csr"
    S: int              # padded: pairs per row (idx.shape[2]); csr: E (col_idx.shape[1])
    has_log_w: bool     # False: every listed pair has weight 1

    @property
    def B(self) -> int:
        return self.kernel.B

    @property
    def N(self) -> int:
        return self.kernel.N

    @property
    def M(self) -> int:
        return self.kernel.M


def _index_tensor(name: str, x, ndim: int, layout: str) -> None:
    _require_tensor(name, x, ndim, layout)
    if x.dtype != torch.int64:
        raise ValueError(f"{name}: expected dtype torch.int64 {layout}, got {x.dtype}")


def _check_log_w_values(log_w: torch.Tensor, active) -> None:
    """NaN / +inf are errors where ``active`` (entries that are read; None = all). Masked
    reductions, no boolean indexing: no copy of the pair list."""
    nan = torch.isnan(log_w)
    pinf = log_w == float("inf")
    if active is not None:
        nan &= active
        pinf &= active
    if bool(nan.any()):
        raise ValueError("log_w: contains NaN (expected finite log-weights, or -inf for an "
                         "absent pair)")
    if bool(pinf.any()):
        raise ValueError("log_w: contains +inf (expected finite log-weights, or -inf for an "
                         "absent pair)")


def _check_key_values(name: str, keys: torch.Tensor, log_w, listed, M: int) -> None:
    """Keys of present pairs in [0, M); keys of absent (log_w = -inf) listed pairs in [-1, M).
    ``listed`` None = every entry. One pass for the common case (every key in range); the
    offending value is only searched for when there is one."""
    lo = -1 if log_w is not None else 0
    if keys.numel() == 0 or (int(keys.min()) >= lo and int(keys.max()) < M):
        if log_w is None or lo == 0 or not bool(((keys == -1) & (log_w != float("-inf"))
                                                 ).any()):
            return
    present = listed if log_w is None else (log_w != float("-inf")) if listed is None \
        else listed & (log_w != float("-inf"))
    if present is None:
        present = torch.ones_like(keys, dtype=torch.bool)
    bad_present = present & ((keys < 0) | (keys >= M))
    if bool(bad_present.any()):
        val = int(keys[bad_present][0])
        hint = " (-1 is only allowed where log_w is -inf)" if val == -1 else ""
        raise ValueError(
            f"{name}: expected key indices in [0, M) = [0, {M}){hint}, got {val}")
    listed_all = torch.ones_like(keys, dtype=torch.bool) if listed is None else listed
    bad_absent = listed_all & ~present & ((keys < -1) | (keys >= M))
    if bool(bad_absent.any()):
        val = int(keys[bad_absent][0])
        raise ValueError(
            f"{name}: expected key indices in [0, M) = [0, {M}), or -1 where log_w is -inf, "
            f"got {val}")


def check_sparse_inputs(
    q=None, k=None, v=None, *,
    idx=None, log_w=None, row_ptr=None, col_idx=None,
    u=None, t=None, W2=None, b2=None,
    activation="gelu",
    offset_table=None,
    q_pos=None, k_pos=None,
    window=None,
    normalize="softmax",
    scale=None,
    return_lse=False,
    check_values: bool = True,
) -> SparseProblem:
    """Validate the arguments of ``sparse_integral_transform``; return a :class:`SparseProblem`.

    ``check_values=False`` skips the data-dependent checks (index ranges, row_ptr order, NaN /
    +inf log-weights, integer positions), which need a device sync.
    """
    # ---- which form ----------------------------------------------------------------------------
    if idx is not None and (row_ptr is not None or col_idx is not None):
        raise ValueError("idx: pass either idx (padded form) or row_ptr and col_idx (CSR form), "
                         "not both")
    if idx is None and row_ptr is None and col_idx is None:
        raise ValueError("idx: the pair list is required: pass idx (B, N, S) (padded form) or "
                         "row_ptr (B, N + 1) and col_idx (B, E) (CSR form)")
    if idx is None and (row_ptr is None) != (col_idx is None):
        missing = "row_ptr" if row_ptr is None else "col_idx"
        raise ValueError(f"{missing}: the CSR form needs both row_ptr (B, N + 1) and "
                         f"col_idx (B, E); {missing} is None")
    form = "padded" if idx is not None else "csr"

    # ---- index tensors: layout and dtype (N of the pair list) ----------------------------------
    if form == "padded":
        _index_tensor("idx", idx, 3, "(B, N, S)")
        N_pairs = idx.shape[1]
    else:
        _index_tensor("row_ptr", row_ptr, 2, "(B, N + 1)")
        _index_tensor("col_idx", col_idx, 2, "(B, E)")
        if row_ptr.shape[1] < 1:
            raise ValueError(f"row_ptr: expected shape (B, N + 1) with at least one column, "
                             f"got shape {_shape(row_ptr)}")
        N_pairs = row_ptr.shape[1] - 1

    # ---- kernel terms: the dense op's checks ---------------------------------------------------
    # The dense check derives N from q, u or q_pos; here the pair list also fixes it (and is
    # checked against them below).
    try:
        kern = check_inputs(
            q, k, v, u=u, t=t, W2=W2, b2=b2, activation=activation, offset_table=offset_table,
            q_pos=q_pos, k_pos=k_pos, normalize=normalize, window=window, scale=scale,
            return_lse=return_lse, check_values=check_values, n_queries=N_pairs)
    except ValueError as e:
        msg = str(e)
        if msg.startswith("integral_transform:"):  # the op-level messages name this op
            raise ValueError("sparse_" + msg) from None
        raise
    B, N, M = kern.B, kern.N, kern.M
    device, dtype = kern.device, kern.dtype

    def same_device(name, x):
        if x.device != device:
            raise ValueError(
                f"{name}: expected all tensors on the same device as v ({device}), got {x.device}")

    # ---- index tensors: sizes and devices ------------------------------------------------------
    if form == "padded":
        same_device("idx", idx)
        _require_dim("idx", idx, 0, B, "B (from v)", "(B, N, S)")
        _require_dim("idx", idx, 1, N, "N (from q, u or q_pos)", "(B, N, S)")
        S = idx.shape[2]
        pair_shape, pair_layout = tuple(idx.shape), "(B, N, S) (the shape of idx)"
    else:
        same_device("row_ptr", row_ptr)
        same_device("col_idx", col_idx)
        _require_dim("row_ptr", row_ptr, 0, B, "B (from v)", "(B, N + 1)")
        if row_ptr.shape[1] != N + 1:
            raise ValueError(f"row_ptr: expected shape (B, N + 1) with N + 1 = {N + 1} "
                             f"(N from q, u or q_pos), got shape {_shape(row_ptr)}")
        _require_dim("col_idx", col_idx, 0, B, "B (from v)", "(B, E)")
        S = col_idx.shape[1]
        pair_shape, pair_layout = tuple(col_idx.shape), "(B, E) (the shape of col_idx)"

    if log_w is not None:
        if not isinstance(log_w, torch.Tensor):
            raise ValueError(f"log_w: expected a torch.Tensor of shape {pair_layout}, "
                             f"got {type(log_w).__name__}")
        if tuple(log_w.shape) != pair_shape:
            raise ValueError(f"log_w: expected shape {pair_layout} = {pair_shape}, "
                             f"got shape {_shape(log_w)}")
        same_device("log_w", log_w)
        if log_w.dtype != dtype:
            raise ValueError(f"log_w: expected dtype {dtype} (same as v), got {log_w.dtype}")

    # ---- values (device sync) ------------------------------------------------------------------
    if check_values:
        if form == "padded":
            listed = None  # every slot
            keys = idx
        else:
            rp = row_ptr
            if B > 0:
                if bool((rp[:, 0] != 0).any()):
                    b = int(torch.nonzero(rp[:, 0] != 0)[0, 0])
                    raise ValueError(f"row_ptr: expected row_ptr[b, 0] = 0, got "
                                     f"{int(rp[b, 0])} for b = {b}")
                dec = rp[:, 1:] < rp[:, :-1]
                if bool(dec.any()):
                    b, i = (int(x) for x in torch.nonzero(dec)[0])
                    raise ValueError(f"row_ptr: expected non-decreasing rows, got "
                                     f"row_ptr[{b}, {i + 1}] = {int(rp[b, i + 1])} < "
                                     f"row_ptr[{b}, {i}] = {int(rp[b, i])}")
                over = rp[:, -1] > S
                if bool(over.any()):
                    b = int(torch.nonzero(over)[0, 0])
                    raise ValueError(f"row_ptr: expected row_ptr[b, N] <= E = {S} (the width "
                                     f"of col_idx), got {int(rp[b, -1])} for b = {b}")
            # entries past row_ptr[b, N] are padding: never read, not checked
            full = B == 0 or bool((rp[:, -1] == S).all())
            listed = None if full else torch.arange(S, device=device)[None, :] < rp[:, -1:]
            keys = col_idx
        if log_w is not None:
            _check_log_w_values(log_w, listed)
        _check_key_values("idx" if form == "padded" else "col_idx", keys, log_w, listed, M)

    return SparseProblem(kernel=kern, form=form, S=S, has_log_w=log_w is not None)
