"""Neighbourhood builders for point clouds: radius and k-nearest graphs in CSR form.

Both builders return the CSR pair list of ``sparse_integral_transform`` (see
``itnet_ext.sparse.validate``), per batch element:

    row_ptr (B, N + 1) int64: row_ptr[b, 0] = 0, non-decreasing; the neighbours of query i
            of batch element b are col_idx[b, row_ptr[b, i]:row_ptr[b, i + 1]];
    col_idx (B, E) int64: key indices in [0, M); E is the largest pair count over the batch
            and entries at or past row_ptr[b, N] are padding, filled with 0 (never read by
            the op; 0 keeps a careless gather in range whenever M >= 1).

Pure PyTorch: runs wherever the positions live (CPU or CUDA), with the same results, since
every step is an exact elementwise IEEE operation, a comparison or an index sort.

Distance rule (used for every comparison, and by the tests' brute force):
    positions are cast to the compute dtype: the promoted dtype of query_pos and key_pos,
    raised to float32 for float16 / bfloat16;
    d2(i, j) = sum_d (q[i, d] - k[j, d])^2, accumulated in the compute dtype in dimension
    order d = 0, 1, ..., D - 1, one rounding per subtraction, product and addition;
    radius: j is a neighbour of i iff d2(i, j) <= thr, thr = r * r evaluated in Python
    (double) and then rounded once to the compute dtype.
The ``cdist`` matmul form |q|^2 + |k|^2 - 2 q.k is not used: it cancels catastrophically
for close points, so points on the boundary of the ball would be decided by rounding noise
and would differ between devices and from a brute force.

Tiling: queries and keys are processed in tiles of at most ``chunk`` x ``chunk`` pairs, so
the full (N, M) distance matrix is never built. Working memory per tile (besides the output
itself) is about chunk^2 * (2 * itemsize + 1) bytes (d2, one difference buffer, the bool
mask; ~9 MB for chunk = 1024 in float32) and, for ``knn_graph`` or ``max_neighbors``, the
merge of the running candidate list with a key tile, at most chunk * (K + chunk) *
(itemsize + 16) bytes with K the number kept per row (chunk * 2K * (itemsize + 16) when the
tile's K nearest are untied and the tile is cut to them first). ``radius_graph`` without
``max_neighbors`` additionally holds the pairs found for one query tile (the output rows of
that tile).

Variable point counts: ``query_lengths`` / ``key_lengths`` (B,) give the number of valid
points of each batch element; points at index >= length are padding: a padded query has an
empty row and a padded key is never a neighbour (their positions are never read, and may
be anything, NaN included). Positions of valid points must be finite.
"""
from __future__ import annotations

import math
import numbers
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["radius_graph", "knn_graph"]

_Lengths = Optional[Union[Tensor, Sequence[int]]]


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------
def _check_positions(query_pos, key_pos) -> torch.dtype:
    """Layouts of the two point sets; returns the compute dtype."""
    for name, x in (("query_pos", query_pos), ("key_pos", key_pos)):
        if not isinstance(x, Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor (B, L, D), got {type(x).__name__}")
        if x.dim() != 3:
            raise ValueError(f"{name}: expected a 3-D tensor (B, L, D), got shape "
                             f"{tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
        if x.shape[2] < 1:
            raise ValueError(f"{name}: expected at least one coordinate (D >= 1), got shape "
                             f"{tuple(x.shape)}")
    if key_pos.shape[0] != query_pos.shape[0]:
        raise ValueError(f"key_pos: expected batch size B = {query_pos.shape[0]} (from "
                         f"query_pos), got shape {tuple(key_pos.shape)}")
    if key_pos.shape[2] != query_pos.shape[2]:
        raise ValueError(f"key_pos: expected D = {query_pos.shape[2]} coordinates (from "
                         f"query_pos), got shape {tuple(key_pos.shape)}")
    if key_pos.device != query_pos.device:
        raise ValueError(f"key_pos: expected the device of query_pos ({query_pos.device}), "
                         f"got {key_pos.device}")
    dtype = torch.promote_types(query_pos.dtype, key_pos.dtype)
    if dtype in (torch.float16, torch.bfloat16):
        # half precision squared distances lose most digits (and overflow at |x| ~ 256)
        dtype = torch.float32
    return dtype


def _check_lengths(name: str, lengths: _Lengths, B: int, L: int) -> List[int]:
    """``lengths`` (B,) of integers in [0, L] as a Python list (None: all L)."""
    if lengths is None:
        return [L] * B
    if isinstance(lengths, Tensor):
        if lengths.dim() != 1 or lengths.shape[0] != B:
            raise ValueError(f"{name}: expected shape (B,) = ({B},), got shape "
                             f"{tuple(lengths.shape)}")
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise ValueError(f"{name}: expected an integer tensor, got dtype {lengths.dtype}")
        values = [int(x) for x in lengths.tolist()]
    else:
        try:
            values = list(lengths)
        except TypeError:
            raise ValueError(f"{name}: expected a tensor or sequence of {B} ints, got "
                             f"{type(lengths).__name__}") from None
        if len(values) != B or not all(isinstance(x, int) and not isinstance(x, bool)
                                       for x in values):
            raise ValueError(f"{name}: expected {B} ints (one per batch element), got "
                             f"{values!r}")
    for b, x in enumerate(values):
        if not 0 <= x <= L:
            raise ValueError(f"{name}: expected values in [0, {L}], got {x} for b = {b}")
    return values


def _check_int(name: str, x, lo: int) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {x!r}")
    return x


def _check_finite(name: str, pos: Tensor, lengths: List[int]) -> None:
    """Valid points must have finite coordinates (NaN would silently drop out of every
    comparison; padding is not read, so it is not checked)."""
    for b, n in enumerate(lengths):
        if n and not bool(torch.isfinite(pos[b, :n]).all()):
            raise ValueError(f"{name}: expected finite coordinates for the valid points, got "
                             f"NaN or inf in batch element b = {b}")


def _prepare(query_pos, key_pos, query_lengths, key_lengths, chunk):
    dtype = _check_positions(query_pos, key_pos)
    B, N = query_pos.shape[:2]
    M = key_pos.shape[1]
    qlen = _check_lengths("query_lengths", query_lengths, B, N)
    klen = _check_lengths("key_lengths", key_lengths, B, M)
    _check_int("chunk", chunk, 1)
    _check_finite("query_pos", query_pos, qlen)
    _check_finite("key_pos", key_pos, klen)
    return dtype, B, N, M, qlen, klen


# --------------------------------------------------------------------------------------------
# Tiles
# --------------------------------------------------------------------------------------------
def _sq_dist(qc: Tensor, kc: Tensor) -> Tensor:
    """d2 (n, m) of queries qc (n, D) and keys kc (m, D) by the module's distance rule: a
    Python loop over D (not ``.sum(-1)``) fixes the accumulation order on every device."""
    d2 = None
    for d in range(qc.shape[1]):
        diff = qc[:, d, None] - kc[None, :, d]
        diff.mul_(diff)
        if d2 is None:
            d2 = diff
        else:
            d2.add_(diff)
    return d2


def _nearest(qc: Tensor, kb: Tensor, K: int, i0: int, thr: Optional[Tensor],
             exclude_self: bool, chunk: int) -> Tuple[Tensor, Tensor]:
    """The K nearest keys of each query of the tile qc (n, D) (global indices i0 + row),
    sorted by (d2, key index); returns (d2 (n, K'), j (n, K')) with K' = min(K, M).

    Keys are streamed in chunks and merged into a running best list: the best list holds
    only keys of earlier chunks (smaller indices) and is itself sorted by (d2, index), so a
    *stable* sort of [best, chunk candidates in index order] on d2 alone orders ties by
    index. With ``thr``, keys farther than the radius, and with ``exclude_self`` the key i
    itself, get d2 = inf; the caller drops those entries.
    """
    n, M = qc.shape[0], kb.shape[0]
    device = qc.device
    best_d = qc.new_empty((n, 0))
    best_j = torch.empty((n, 0), dtype=torch.int64, device=device)
    rows = torch.arange(i0, i0 + n, device=device)[:, None]
    for s in range(0, M, chunk):
        e = min(s + chunk, M)
        d2 = _sq_dist(qc, kb[s:e])
        j = torch.arange(s, e, device=device).expand(n, -1)
        if thr is not None:
            d2.masked_fill_(~(d2 <= thr), math.inf)
        if exclude_self:
            d2.masked_fill_(j == rows, math.inf)
        d2, j = _prune(d2, j, K, drop_inf=thr is not None)
        cat_d, order = torch.sort(torch.cat([best_d, d2], dim=1), dim=1, stable=True)
        best_d = cat_d[:, :K]
        best_j = torch.gather(torch.cat([best_j, j], dim=1), 1, order[:, :K])
    return best_d, best_j


def _prune(d2: Tensor, j: Tensor, K: int, drop_inf: bool) -> Tuple[Tensor, Tensor]:
    """Reduce a key tile (n, m), keys in index order, to its K nearest per row, still in
    index order, so that the merge sorts (n, 2K) instead of (n, K + m) (several times
    faster for K << chunk).

    ``topk`` picks an arbitrary subset among keys tied at the K-th distance t, so it is used
    only when the K nearest set is unique in every row: exactly K keys have d2 <= t (or
    t = inf with ``drop_inf``, where the inf entries are discarded anyway). Otherwise (ties
    at t, e.g. points on a grid) the tile is returned whole and the stable merge sort
    decides by index.
    """
    if d2.shape[1] <= K:
        return d2, j
    vals, sel = torch.topk(d2, K, dim=1, largest=False, sorted=False)
    t = vals.amax(dim=1, keepdim=True)
    unique = (d2 <= t).sum(dim=1) == K
    if drop_inf:
        unique = unique | (t[:, 0] == math.inf)
    if not bool(unique.all()):
        return d2, j
    sel = torch.sort(sel, dim=1).values     # back to index order
    return torch.gather(d2, 1, sel), torch.gather(j, 1, sel)


def _assemble(per_batch: List[Tuple[Tensor, Tensor]], B: int, N: int,
              device: torch.device) -> Tuple[Tensor, Tensor]:
    """CSR from per-batch-element (counts (N,), cols (nnz,)) with rows in query order."""
    E = max((int(cols.numel()) for _, cols in per_batch), default=0)
    row_ptr = torch.zeros((B, N + 1), dtype=torch.int64, device=device)
    col_idx = torch.zeros((B, E), dtype=torch.int64, device=device)
    for b, (counts, cols) in enumerate(per_batch):
        row_ptr[b, 1:] = torch.cumsum(counts, 0)
        col_idx[b, :cols.numel()] = cols
    return row_ptr, col_idx


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------
def radius_graph(query_pos: Tensor, key_pos: Tensor, r: float, *,
                 max_neighbors: Optional[int] = None,
                 query_lengths: _Lengths = None, key_lengths: _Lengths = None,
                 include_self: bool = True, chunk: int = 1024) -> Tuple[Tensor, Tensor]:
    """Radius neighbourhoods: for each query, every key within distance ``r`` (d2 <= r*r by
    the module's distance rule), per batch element.

    Args:
        query_pos: (B, N, D) floating-point query positions.
        key_pos: (B, M, D) key positions (same B, D and device; it may be ``query_pos``).
        r: radius, a finite number > 0 (boundary included).
        max_neighbors: keep at most this many keys per query: the nearest, ties broken by
            the smaller key index. ``None``: keep all.
        query_lengths, key_lengths: (B,) valid point counts (tensor or ints); ``None``: all.
        include_self: ``False`` drops the pair (i, i) (query i and key i, the same point
            when ``key_pos`` is ``query_pos``); other coincident points are kept. Applied
            before ``max_neighbors``.
        chunk: tile size, queries and keys (see the module doc for the memory bound).

    Returns:
        ``(row_ptr (B, N + 1), col_idx (B, E))`` int64 on the positions' device, the CSR of
        the module doc; the neighbours of each row are sorted by increasing key index.
    """
    dtype, B, N, M, qlen, klen = _prepare(query_pos, key_pos, query_lengths, key_lengths,
                                          chunk)
    if isinstance(r, Tensor):
        r = r.item() if r.numel() == 1 else r
    if isinstance(r, bool) or not isinstance(r, numbers.Real) or not (0 < r < math.inf):
        raise ValueError(f"r: expected a finite number > 0, got {r!r}")
    if max_neighbors is not None:
        _check_int("max_neighbors", max_neighbors, 1)
    device = query_pos.device
    thr = torch.tensor(float(r) * float(r), dtype=dtype, device=device)

    per_batch = []
    for b in range(B):
        nb, mb = qlen[b], klen[b]
        qb = query_pos[b, :nb].to(dtype)
        kb = key_pos[b, :mb].to(dtype)
        counts = torch.zeros(N, dtype=torch.int64, device=device)
        cols = []
        for s in range(0, nb if mb else 0, chunk):
            e = min(s + chunk, nb)
            if max_neighbors is not None:
                c, j = _radius_capped(qb[s:e], kb, max_neighbors, s, thr, not include_self,
                                      chunk)
            else:
                c, j = _radius_all(qb[s:e], kb, s, thr, not include_self, chunk)
            counts[s:e] = c
            cols.append(j)
        cols = torch.cat(cols) if cols else torch.empty(0, dtype=torch.int64, device=device)
        per_batch.append((counts, cols))
    return _assemble(per_batch, B, N, device)


def _radius_all(qc: Tensor, kb: Tensor, i0: int, thr: Tensor, exclude_self: bool,
                chunk: int) -> Tuple[Tensor, Tensor]:
    """Every key within the radius for the query tile qc: (counts (n,), cols) row-major,
    keys of a row in increasing index order."""
    n, M = qc.shape[0], kb.shape[0]
    device = qc.device
    rows, keys = [], []
    for s in range(0, M, chunk):
        e = min(s + chunk, M)
        hit = _sq_dist(qc, kb[s:e]) <= thr
        if exclude_self and s < i0 + n and i0 < e:
            # the diagonal i == j crosses this tile
            i = torch.arange(n, device=device)
            jl = i + i0 - s
            on = (jl >= 0) & (jl < e - s)
            hit[i[on], jl[on]] = False
        ij = torch.nonzero(hit)          # row-major within the tile
        rows.append(ij[:, 0])
        keys.append(ij[:, 1] + s)
    rows = torch.cat(rows)
    keys = torch.cat(keys)
    # Tiles come in increasing key order, each row-major: a stable sort on the row alone
    # leaves each row's keys in increasing index order.
    rows, order = torch.sort(rows, stable=True)
    return torch.bincount(rows, minlength=n), keys[order]


def _radius_capped(qc: Tensor, kb: Tensor, K: int, i0: int, thr: Tensor, exclude_self: bool,
                   chunk: int) -> Tuple[Tensor, Tensor]:
    """The at most K nearest keys within the radius for the query tile qc, (counts, cols)
    row-major with each row's keys re-sorted by index."""
    M = kb.shape[0]
    d2, j = _nearest(qc, kb, K, i0, thr, exclude_self, chunk)
    valid = d2 <= thr                    # the d2 = inf entries are out of radius or self
    counts = valid.sum(1)
    # Sort each row's kept keys by index; dropped entries get the sentinel M (sorts last).
    j = torch.sort(torch.where(valid, j, torch.full_like(j, M)), dim=1).values
    keep = torch.arange(j.shape[1], device=j.device)[None, :] < counts[:, None]
    return counts, j[keep]


def knn_graph(query_pos: Tensor, key_pos: Tensor, k: int, *,
              query_lengths: _Lengths = None, key_lengths: _Lengths = None,
              chunk: int = 1024) -> Tuple[Tensor, Tensor]:
    """k-nearest neighbourhoods: for each query, the ``k`` nearest keys of its batch element
    (all of them when it has fewer than k), by the module's distance rule.

    A query is its own neighbour when ``key_pos`` is ``query_pos`` (distance 0); ask for
    k + 1 and drop it if that is not wanted.

    Args:
        query_pos: (B, N, D) floating-point query positions.
        key_pos: (B, M, D) key positions (same B, D and device).
        k: number of neighbours, an int >= 1.
        query_lengths, key_lengths: (B,) valid point counts (tensor or ints); ``None``: all.
        chunk: tile size, queries and keys (see the module doc for the memory bound).

    Returns:
        ``(row_ptr (B, N + 1), col_idx (B, E))`` int64 on the positions' device, the CSR of
        the module doc; each valid row holds min(k, key_lengths[b]) keys sorted by
        increasing distance, ties by increasing key index.
    """
    dtype, B, N, M, qlen, klen = _prepare(query_pos, key_pos, query_lengths, key_lengths,
                                          chunk)
    _check_int("k", k, 1)
    device = query_pos.device

    per_batch = []
    for b in range(B):
        nb, mb = qlen[b], klen[b]
        qb = query_pos[b, :nb].to(dtype)
        kb = key_pos[b, :mb].to(dtype)
        K = min(k, mb)
        counts = torch.zeros(N, dtype=torch.int64, device=device)
        counts[:nb] = K
        cols = []
        for s in range(0, nb if K else 0, chunk):
            _, j = _nearest(qb[s:s + chunk], kb, K, s, None, False, chunk)
            cols.append(j.reshape(-1))
        cols = torch.cat(cols) if cols else torch.empty(0, dtype=torch.int64, device=device)
        per_batch.append((counts, cols))
    return _assemble(per_batch, B, N, device)
