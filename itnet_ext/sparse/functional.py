"""The sparse (pair-list) integral transform, fused (docs/design.md section 2, sampled and
neighbourhoods): the public entry of ``itnet::sparse_fwd`` / ``sparse_bwd``."""
import torch

from .._common.names import ACTIVATIONS
from .._common.checks import check_cpu_dtype, values_checkable, window_bounds
from . import op  # noqa: F401  (registers the fake kernel and autograd of itnet::sparse_*)
from .validate import check_sparse_inputs

__all__ = ["sparse_integral_transform"]


def sparse_integral_transform(
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
):
    r"""The integral transform evaluated on listed (query, key) pairs only (docs/design.md section 2).

    Monte Carlo (keys drawn by a sampler of :mod:`itnet_ext.nn.samplers`, with the
    importance log-weights of :func:`~itnet_ext.nn.samplers.importance_log_weights`) and
    neighbourhoods (CSR graphs from :func:`~itnet_ext.nn.radius_graph` /
    :func:`~itnet_ext.nn.knn_graph`) both reduce to this op. Same signature and semantics as
    :func:`itnet_ext.reference.sparse_integral_transform` (the float64 oracle): the kernel
    arguments are those of :func:`integral_transform`, and for the pairs s of query i::

        softmax: y_i = sum_s exp(l(i, j_s) + log_w_s) v_{j_s} / sum_s exp(l(i, j_s) + log_w_s)
        none:    y_i = sum_s l(i, j_s) exp(log_w_s) v_{j_s}

    Args:
        q, k, v, u, t, W2, b2, activation, offset_table, q_pos, k_pos, window, scale:
            as in :func:`integral_transform`.
        idx, log_w: the padded form: idx (B, N, S) int64 keys, log_w (B, N, S) per-pair
            log-weights (default 0); log_w = -inf marks an absent pair (its idx may be -1).
        row_ptr, col_idx, log_w: the CSR form: row_ptr (B, N + 1) int64, col_idx (B, E)
            int64, log_w (B, E); the pairs of query i are entries row_ptr[b, i] to
            row_ptr[b, i + 1] - 1.
        normalize: "softmax" (self-normalized) or "none" (plain weighted sum).
        return_lse: also return the per-row log-sum-exp of l + log_w (softmax only).

    A key listed twice is two pairs; a pair whose offset lies outside ``window`` is left
    out; a row without pairs outputs 0 (lse -inf). Gradients flow to q, k, v, u, t, W2, b2,
    offset_table and log_w (pathwise, docs/design.md section 2), not to indices or positions.

    Kernels (CPU float32 / float64; CUDA float32 / float64): one query row per work item,
    its pairs gathered in chunks and the pair MLP evaluated in registers; nothing of size
    pairs x R or pairs x H is stored. The CPU backward scatters key-side gradients into
    per-thread buffers (no races, deterministic for a given thread count); the CUDA backward
    uses atomics (see the CUDA entry for its deterministic mode).
    """
    # the arguments by name (one spelling of the list: the signature); the data-dependent
    # checks need a host sync, under torch.compile the op itself performs them
    check_cpu_dtype(v)
    sp = check_sparse_inputs(**locals(), check_values=values_checkable(v))
    prob = sp.kernel
    if sp.form == "padded":
        B, N, S = idx.shape
        row_ptr = (torch.arange(N + 1, device=idx.device, dtype=torch.int64) * S).expand(B, N + 1)
        col_idx = idx.reshape(B, N * S)
        if log_w is not None:
            log_w = log_w.reshape(B, N * S)
    lo, hi = window_bounds(prob.window)
    out, lse = torch.ops.itnet.sparse_fwd(
        q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos, row_ptr, col_idx, log_w, lo, hi,
        float(prob.scale), ACTIVATIONS.index(prob.activation), prob.normalize == "softmax")
    return (out, lse) if return_lse else out
