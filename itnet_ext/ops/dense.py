"""The dense op: fake (meta) kernels and autograd for torch.ops.itnet.dense_*.

Argument order of both ops (see csrc/ops.cpp):
    q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos, key_weight,
    key_padding_mask, attn_mask, window_lo, window_hi, scale, activation,
    softmax, causal
"""
import torch

from .. import _C  # noqa: F401  (registers the ops)

_TENSOR_ARGS = ("q", "k", "v", "u", "t", "W2", "b2", "offset_table", "q_pos", "k_pos",
                "key_weight", "key_padding_mask", "attn_mask")
_STATIC = ("window_lo", "window_hi", "scale", "activation", "softmax", "causal")
_NUM_ARGS = len(_TENSOR_ARGS) + len(_STATIC)
_SOFTMAX = _STATIC.index("softmax")
# positions of the differentiable inputs, in dense_bwd's output order
_GRAD_SLOTS = tuple(_TENSOR_ARGS.index(n) for n in
                    ("q", "k", "v", "u", "t", "W2", "b2", "offset_table", "key_weight"))


def _num_queries(q, u, q_pos):
    if q is not None:
        return q.shape[2]
    if u is not None:
        return u.shape[1]
    if q_pos is None or q_pos.dim() != 3:
        raise RuntimeError("q_pos: a (B or 1, N, D) tensor is needed to know N when neither q "
                           "nor u is given")
    return q_pos.shape[1]


def _check_devices(v, named):
    # The real kernels check this too; the fake kernel must not turn a
    # device mix (e.g. one argument on 'meta') into a silent result.
    for name, x in named:
        if x is not None and x.device != v.device:
            raise RuntimeError(f"{name}: expected a tensor on {v.device} (the device of v), "
                               f"got {x.device}")


@torch.library.register_fake("itnet::dense_fwd")
def _dense_fwd_fake(q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos, key_weight,
                    key_padding_mask, attn_mask, window_lo, window_hi, scale, activation,
                    softmax, causal):
    _check_devices(v, zip(_TENSOR_ARGS, (q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos,
                                         key_weight, key_padding_mask, attn_mask)))
    B, H, _, Dv = v.shape
    N = _num_queries(q, u, q_pos)
    out = v.new_empty((B, H, N, Dv))
    # float16 / bfloat16 calls return a float32 log-sum-exp (the kernels' statistics)
    lse_dtype = torch.float32 if v.dtype in (torch.float16, torch.bfloat16) else v.dtype
    lse = v.new_empty((B, H, N) if softmax else (0,), dtype=lse_dtype)
    return out, lse


@torch.library.register_fake("itnet::dense_bwd")
def _dense_bwd_fake(grad_out, out, lse, grad_lse, *args):
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
    grads = torch.ops.itnet.dense_bwd(grad_out, out, lse, grad_lse, *tensors, *ctx.static_args)
    result = [None] * _NUM_ARGS
    for slot, g in zip(_GRAD_SLOTS, grads):
        if tensors[slot] is not None and ctx.needs_input_grad[slot]:
            result[slot] = g
    return tuple(result)


def _double_backward(ctx, *grads):
    raise RuntimeError("itnet::dense_bwd: double backward (gradients of gradients) of the fused "
                       "integral transform is not supported; use itnet_ext.reference for it")


torch.library.register_autograd("itnet::dense_fwd", _backward, setup_context=_setup_context)
torch.library.register_autograd("itnet::dense_bwd", _double_backward)
