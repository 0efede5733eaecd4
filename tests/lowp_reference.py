"""The dense integral transform in plain PyTorch, computed in the inputs' own dtype.

The yardstick of the half-precision CUDA tests (FlashAttention's tolerance rule): the
fused kernel's error against the float64 oracle must stay within a small multiple of the
error that this function makes when it runs in float16 / bfloat16 on the same device.
``itnet_ext.reference`` cannot serve: it upcasts half inputs to float32.

Same math and argument handling as ``itnet_ext.reference.integral_transform`` (one chunk,
no checkpointing): logits, softmax statistics, products and the autograd backward all run
in ``v.dtype`` (matmuls with the library's usual float32 accumulation); only the support
(positions, window, offset indices) is computed exactly, in float64, since it is discrete.
tests/test_lowp_reference.py checks that in float64 it equals the oracle.
"""
import torch
import torch.nn.functional as F

from itnet_ext._common.kernel_args import check_inputs

_ACT = {"relu": F.relu, "gelu": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu}


def integral_transform(q=None, k=None, v=None, *, u=None, t=None, W2=None, b2=None,
                       activation="gelu", offset_table=None, q_pos=None, k_pos=None,
                       normalize="softmax", key_weight=None, causal=False, window=None,
                       key_padding_mask=None, attn_mask=None, scale=None, return_lse=False):
    p = check_inputs(q, k, v, u=u, t=t, W2=W2, b2=b2, activation=activation,
                     offset_table=offset_table, q_pos=q_pos, k_pos=k_pos, normalize=normalize,
                     key_weight=key_weight, causal=causal, window=window,
                     key_padding_mask=key_padding_mask, attn_mask=attn_mask, scale=scale,
                     return_lse=return_lse)
    B, H, N, M = p.B, p.H, p.N, p.M
    dt, dev = v.dtype, v.device

    def full(value):
        return torch.full((), value, dtype=dt, device=dev)

    # ---- positions and offsets: exact (float64 / integers) ----
    if p.needs_positions:
        qp = (q_pos.detach().double() if q_pos is not None
              else torch.arange(N, device=dev, dtype=torch.float64).reshape(1, N, 1))
        kp = (k_pos.detach().double() if k_pos is not None
              else torch.arange(M, device=dev, dtype=torch.float64).reshape(1, M, 1))
        off = kp[:, None, :, :] - qp[:, :, None, :]                    # (Bp, N, M, D)
        lo = torch.tensor([w[0] for w in p.window], dtype=torch.float64, device=dev)
        hi = torch.tensor([w[1] for w in p.window], dtype=torch.float64, device=dev)

    # ---- logits (B, H, N, M) in dt ----
    logits = torch.zeros(B, H, N, M, dtype=dt, device=dev)
    if p.content:
        logits = logits + torch.einsum("bhnd,bhmd->bhnm", q, k) * p.scale
    if p.mlp:
        pre = torch.zeros(1, 1, 1, p.R, dtype=dt, device=dev)
        if u is not None:
            pre = pre + u[:, :, None, :]
        if t is not None:
            pre = pre + t[:, None, :, :]
        if offset_table is not None:
            sizes = torch.tensor(p.offset_sizes, dtype=torch.long, device=dev)
            strides = torch.tensor(p.offset_strides, dtype=torch.long, device=dev)
            rel = torch.round(off - lo).long()
            rel = torch.minimum(torch.clamp(rel, min=0), sizes - 1)  # outside: masked below
            pre = pre + offset_table[(rel * strides).sum(-1)]
        mlp = torch.einsum("bnmr,hr->bhnm", _ACT[p.activation](pre), W2)
        if b2 is not None:
            mlp = mlp + b2[None, :, None, None]
        logits = logits + mlp

    # ---- support ----
    support = torch.ones(1, 1, N, M, dtype=torch.bool, device=dev)
    if key_padding_mask is not None:
        support = support & ~key_padding_mask[:, None, None, :]
    if p.causal:
        support = support & (torch.arange(M, device=dev)[None, :]
                             <= torch.arange(N, device=dev)[:, None])
    if p.window is not None:
        support = support & ((off >= lo) & (off <= hi)).all(-1)[:, None]
    if attn_mask is not None:
        am = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
        if p.attn_mask_kind == "bool":
            support = support & am
        else:
            support = support & (am != float("-inf"))
            logits = logits + torch.where(support, am, full(0.0))
    support = support.expand(B, H, N, M)

    # ---- weights and output ----
    if p.normalize == "none":
        a = logits if key_weight is None else logits * key_weight[:, None, None, :]
        out = torch.einsum("bhnm,bhmd->bhnd", torch.where(support, a, full(0.0)), v)
        return (out, None) if return_lse else out
    z = logits if key_weight is None else logits + torch.log(key_weight)[:, None, None, :]
    z = torch.where(support, z, full(float("-inf")))
    m = (z.amax(-1, keepdim=True).detach() if M > 0
         else torch.full((B, H, N, 1), float("-inf"), dtype=dt, device=dev))
    m = torch.where(torch.isfinite(m), m, full(0.0))
    pexp = torch.exp(z - m)
    denom = pexp.sum(-1)
    nonempty = denom > 0
    denom = torch.where(nonempty, denom, full(1.0))
    out = torch.einsum("bhnm,bhmd->bhnd", pexp, v) / denom[..., None]
    if not return_lse:
        return out
    lse = torch.where(nonempty, torch.log(denom) + m[..., 0], full(float("-inf")))
    return out, lse
