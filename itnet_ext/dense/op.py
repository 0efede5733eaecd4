"""The dense op: fake (meta) kernels and autograd for torch.ops.itnet.dense_*.

Argument order of both ops (see csrc/ops.cpp):
    q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos, key_weight,
    key_padding_mask, attn_mask, window_lo, window_hi, scale, activation,
    softmax, causal
"""
import torch

from .._common.op_autograd import check_devices, fake_grads, register_out_lse_autograd

_TENSOR_ARGS = ("q", "k", "v", "u", "t", "W2", "b2", "offset_table", "q_pos", "k_pos",
                "key_weight", "key_padding_mask", "attn_mask")
_STATIC = ("window_lo", "window_hi", "scale", "activation", "softmax", "causal")
_SOFTMAX = _STATIC.index("softmax")
# the differentiable inputs, in dense_bwd's output order
_GRAD_NAMES = ("q", "k", "v", "u", "t", "W2", "b2", "offset_table", "key_weight")
_GRAD_SLOTS = tuple(_TENSOR_ARGS.index(n) for n in _GRAD_NAMES)


def _num_queries(q, u, q_pos):
    if q is not None:
        return q.shape[2]
    if u is not None:
        return u.shape[1]
    if q_pos is None or q_pos.dim() != 3:
        raise RuntimeError("q_pos: a (B or 1, N, D) tensor is needed to know N when neither q "
                           "nor u is given")
    return q_pos.shape[1]


@torch.library.register_fake("itnet::dense_fwd")
def _dense_fwd_fake(q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos, key_weight,
                    key_padding_mask, attn_mask, window_lo, window_hi, scale, activation,
                    softmax, causal):
    check_devices(v, zip(_TENSOR_ARGS, (q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos,
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
    check_devices(v, zip(("grad_out", "out", "lse", "grad_lse") + _TENSOR_ARGS,
                          (grad_out, out, lse, grad_lse) + tuple(args[:len(_TENSOR_ARGS)])))
    return fake_grads(v, args, _GRAD_SLOTS)


register_out_lse_autograd("itnet::dense_fwd", "itnet::dense_bwd", tensor_args=_TENSOR_ARGS,
                          grad_names=_GRAD_NAMES, softmax_index=_SOFTMAX,
                          what="integral transform")
