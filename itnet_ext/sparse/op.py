"""The sparse (pair-list) op: fake (meta) kernels and autograd for torch.ops.itnet.sparse_*.

Argument order of both ops (see csrc/ops.cpp):
    q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos, row_ptr, col_idx, log_w,
    window_lo, window_hi, scale, activation, softmax
"""
import torch

from .._common.op_autograd import check_devices, fake_grads, register_out_lse_autograd

_TENSOR_ARGS = ("q", "k", "v", "u", "t", "W2", "b2", "offset_table", "q_pos", "k_pos",
                "row_ptr", "col_idx", "log_w")
_STATIC = ("window_lo", "window_hi", "scale", "activation", "softmax")
_SOFTMAX = _STATIC.index("softmax")
# the differentiable inputs, in sparse_bwd's output order
_GRAD_NAMES = ("q", "k", "v", "u", "t", "W2", "b2", "offset_table", "log_w")
_GRAD_SLOTS = tuple(_TENSOR_ARGS.index(n) for n in _GRAD_NAMES)


@torch.library.register_fake("itnet::sparse_fwd")
def _sparse_fwd_fake(q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos, row_ptr, col_idx, log_w,
                     window_lo, window_hi, scale, activation, softmax):
    check_devices(v, zip(_TENSOR_ARGS, (q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos,
                                         row_ptr, col_idx, log_w)))
    if row_ptr.dim() != 2 or row_ptr.shape[1] < 1:
        raise RuntimeError(f"row_ptr: expected shape (B, N + 1), got {tuple(row_ptr.shape)}")
    B, H, _, Dv = v.shape
    N = row_ptr.shape[1] - 1
    out = v.new_empty((B, H, N, Dv))
    lse = v.new_empty((B, H, N) if softmax else (0,))
    return out, lse


@torch.library.register_fake("itnet::sparse_bwd")
def _sparse_bwd_fake(grad_out, out, lse, grad_lse, *args):
    v = args[2]
    check_devices(v, zip(("grad_out", "out", "lse", "grad_lse") + _TENSOR_ARGS,
                          (grad_out, out, lse, grad_lse) + tuple(args[:len(_TENSOR_ARGS)])))
    return fake_grads(v, args, _GRAD_SLOTS)


register_out_lse_autograd("itnet::sparse_fwd", "itnet::sparse_bwd", tensor_args=_TENSOR_ARGS,
                          grad_names=_GRAD_NAMES, softmax_index=_SOFTMAX,
                          what="sparse integral transform")
