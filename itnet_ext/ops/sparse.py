"""The sparse (pair-list) op: fake (meta) kernels and autograd for torch.ops.itnet.sparse_*.

Argument order of both ops (see csrc/ops.cpp):
    q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos, row_ptr, col_idx, log_w,
    window_lo, window_hi, scale, activation, softmax
"""
import torch

from .. import _C  # noqa: F401  (registers the ops)
from .dense import _check_devices

_TENSOR_ARGS = ("q", "k", "v", "u", "t", "W2", "b2", "offset_table", "q_pos", "k_pos",
                "row_ptr", "col_idx", "log_w")
_STATIC = ("window_lo", "window_hi", "scale", "activation", "softmax")
_NUM_ARGS = len(_TENSOR_ARGS) + len(_STATIC)
_SOFTMAX = _STATIC.index("softmax")
# positions of the differentiable inputs, in sparse_bwd's output order
_GRAD_SLOTS = tuple(_TENSOR_ARGS.index(n) for n in
                    ("q", "k", "v", "u", "t", "W2", "b2", "offset_table", "log_w"))


@torch.library.register_fake("itnet::sparse_fwd")
def _sparse_fwd_fake(q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos, row_ptr, col_idx, log_w,
                     window_lo, window_hi, scale, activation, softmax):
    _check_devices(v, zip(_TENSOR_ARGS, (q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos,
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
    _check_devices(v, zip(("grad_out", "out", "lse", "grad_lse") + _TENSOR_ARGS,
                          (grad_out, out, lse, grad_lse) + tuple(args[:len(_TENSOR_ARGS)])))
    # the kernels return contiguous gradients, whatever the inputs' strides
    return tuple(args[slot].new_empty(args[slot].shape) if args[slot] is not None
                 else v.new_empty((0,)) for slot in _GRAD_SLOTS)


def _setup_context(ctx, inputs, output):
    out, lse = output
    n = len(_TENSOR_ARGS)
    ctx.save_for_backward(*inputs[:n], out, lse)
    ctx.static_args = inputs[n:]


def _backward(ctx, grad_out, grad_lse):
    saved = ctx.saved_tensors
    n = len(_TENSOR_ARGS)
    tensors, out, lse = saved[:n], saved[n], saved[n + 1]
    softmax = ctx.static_args[_SOFTMAX]
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    if not softmax:
        grad_lse = None
    grads = torch.ops.itnet.sparse_bwd(grad_out, out, lse, grad_lse, *tensors, *ctx.static_args)
    result = [None] * _NUM_ARGS
    for slot, g in zip(_GRAD_SLOTS, grads):
        if tensors[slot] is not None and ctx.needs_input_grad[slot]:
            result[slot] = g
    return tuple(result)


def _double_backward(ctx, *grads):
    raise RuntimeError("itnet::sparse_bwd: double backward (gradients of gradients) of the fused "
                       "sparse integral transform is not supported; use itnet_ext.reference "
                       "for it")


torch.library.register_autograd("itnet::sparse_fwd", _backward, setup_context=_setup_context)
torch.library.register_autograd("itnet::sparse_bwd", _double_backward)
