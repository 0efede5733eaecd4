"""The dense op: fake (meta) kernels and autograd for torch.ops.itnet.dense_*.

Argument order of both ops (see csrc/ops.cpp):
    q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos, key_weight,
    key_padding_mask, attn_mask, window_lo, window_hi, scale, activation,
    softmax, causal
"""
import torch

from .. import _C  # noqa: F401  (registers the ops)

_NUM_ARGS = 19
# positions of the differentiable inputs, in dense_bwd's output order
_GRAD_SLOTS = (0, 1, 2, 3, 4, 5, 6, 7, 10)  # q k v u t W2 b2 offset_table key_weight


def _num_queries(q, u, q_pos):
    if q is not None:
        return q.shape[2]
    if u is not None:
        return u.shape[1]
    return q_pos.shape[1]


@torch.library.register_fake("itnet::dense_fwd")
def _dense_fwd_fake(q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos, key_weight,
                    key_padding_mask, attn_mask, window_lo, window_hi, scale, activation,
                    softmax, causal):
    B, H, _, Dv = v.shape
    N = _num_queries(q, u, q_pos)
    out = v.new_empty((B, H, N, Dv))
    lse = v.new_empty((B, H, N)) if softmax else v.new_empty((0,))
    return out, lse


@torch.library.register_fake("itnet::dense_bwd")
def _dense_bwd_fake(grad_out, out, lse, grad_lse, *args):
    v = args[2]
    grads = []
    for slot in _GRAD_SLOTS:
        x = args[slot]
        grads.append(torch.empty_like(x) if x is not None else v.new_empty((0,)))
    return tuple(grads)


def _setup_context(ctx, inputs, output):
    out, lse = output
    tensors = inputs[:13]
    ctx.save_for_backward(*tensors, out, lse)
    ctx.static_args = inputs[13:]


def _backward(ctx, grad_out, grad_lse):
    saved = ctx.saved_tensors
    tensors, out, lse = saved[:13], saved[13], saved[14]
    softmax = ctx.static_args[3]
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    if not softmax:
        grad_lse = None
    grads = torch.ops.itnet.dense_bwd(grad_out, out, lse, grad_lse, *tensors, *ctx.static_args)
    result = [None] * _NUM_ARGS
    for slot, g in zip(_GRAD_SLOTS, grads):
        if tensors[slot] is not None and ctx.needs_input_grad[slot]:
            result[slot] = g
    return tuple(result)


torch.library.register_autograd("itnet::dense_fwd", _backward, setup_context=_setup_context)
