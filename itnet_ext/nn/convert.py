"""Exact converters: ``nn.MultiheadAttention`` and ``nn.Conv1d`` / ``nn.Conv2d`` as integral transforms.

See docs/design.md section 3.

- :class:`IntegralMultiheadAttention`: content term only, softmax; same constructor,
  ``forward`` signature, return value and parameter names as ``nn.MultiheadAttention``
  (``load_state_dict(mha.state_dict())`` works both ways).
- :class:`IntegralConv1d` / :class:`IntegralConv2d`: ``none`` normalization, content off,
  one head per kernel tap, MLP term with ``u = t = 0``, relu, a one-hot offset table
  (``E[offset of tap h, h] = 1``), ``W2 = I``; value of head ``h`` = that tap's weight
  slice applied to the input; output = sum over heads + bias. Same constructor, call
  convention and parameter names (``weight``, ``bias``) as the torch conv.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .._common.layer_inputs import batch_first_inputs, convert_masks
from ..dense import functional as _functional
from .transform import IntegralTransform

__all__ = [
    "IntegralMultiheadAttention",
    "IntegralConv1d",
    "IntegralConv2d",
    "from_multihead_attention",
    "from_conv1d",
    "from_conv2d",
]


# ======================================================================================
# nn.MultiheadAttention
# ======================================================================================
class IntegralMultiheadAttention(IntegralTransform):
    r"""``nn.MultiheadAttention`` computed by the integral transform (content term, softmax).

    Constructor and ``forward`` mirror ``nn.MultiheadAttention``; ``add_bias_kv`` and
    ``add_zero_attn`` are not supported, and attention dropout is not implemented:
    a module with ``dropout > 0`` raises in training mode (call ``.eval()``).

    Differences from torch, by design: a query whose keys are all masked outputs
    ``out_proj.bias`` (zero transform output) and zero attention weights, where torch gives NaN.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: Optional[int] = None,
        vdim: Optional[int] = None,
        batch_first: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        if add_bias_kv:
            raise ValueError("IntegralMultiheadAttention does not support add_bias_kv=True")
        if add_zero_attn:
            raise ValueError("IntegralMultiheadAttention does not support add_zero_attn=True")
        if not (0.0 <= float(dropout) <= 1.0):
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        super().__init__(
            embed_dim,
            num_heads,
            kernel_hidden=0,
            content=True,
            normalize="softmax",
            bias=bias,
            kdim=kdim,
            vdim=vdim,
            batch_first=batch_first,
            device=device,
            dtype=dtype,
        )
        self.dropout = float(dropout)
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False

    def extra_repr(self) -> str:
        s = f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.in_proj_bias is None:
            s += ", bias=False"
        if not self._qkv_same_embed_dim:
            s += f", kdim={self.kdim}, vdim={self.vdim}"
        if self.batch_first:
            s += ", batch_first=True"
        return s

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """Same arguments, shapes and return value as ``nn.MultiheadAttention.forward``."""
        if self.training and self.dropout > 0.0:
            raise ValueError(
                f"IntegralMultiheadAttention does not implement attention dropout (dropout={self.dropout}); "
                "call .eval() or build it from a module with dropout=0"
            )
        q_in, k_in, v_in, is_batched = batch_first_inputs(self, query, key, value)
        B, M = q_in.shape[0], k_in.shape[1]

        # torch's is_causal semantics (F.multi_head_attention_forward, non-fast path):
        # it is a hint that requires attn_mask; the causal mask replaces attn_mask only
        # when no key_padding_mask is given and no weights are needed, otherwise attn_mask is used.
        if is_causal and attn_mask is None:
            raise RuntimeError(
                "Need attn_mask if specifying the is_causal hint. "
                "You may use the Transformer module method "
                "`generate_square_subsequent_mask` to create this mask."
            )
        causal = False
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None
            causal = True

        kpm, am = convert_masks(
            key_padding_mask, attn_mask, q_in, k_in, num_heads=self.num_heads, is_batched=is_batched
        )
        projected = self._in_projection(q_in, k_in, v_in)
        heads = self._transform(
            q_in,
            k_in,
            v_in,
            query_pos=None,
            key_pos=None,
            self_attention=False,
            key_padding_mask=kpm,
            attn_mask=am,
            causal=causal,
            projected=projected,
        )
        out = self._out(heads, is_batched)
        if not need_weights:
            return out, None

        # Materialized weights, as nn.MultiheadAttention returns them.
        q, k, _ = projected
        logits = torch.matmul(q * (1.0 / math.sqrt(self.head_dim)), k.transpose(-2, -1))  # (B, H, N, M)
        if am is not None:
            if am.dtype == torch.bool:
                logits = logits.masked_fill(~am, float("-inf"))
            else:
                logits = logits + am
        if kpm is not None:
            logits = logits.masked_fill(kpm.view(B, 1, 1, M), float("-inf"))
        empty = torch.isneginf(logits).all(dim=-1, keepdim=True)
        weights = torch.softmax(logits.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
        if average_attn_weights:
            weights = weights.mean(dim=1)
        if not is_batched:
            weights = weights.squeeze(0)
        return out, weights


def from_multihead_attention(mha: nn.MultiheadAttention) -> IntegralMultiheadAttention:
    """Build an :class:`IntegralMultiheadAttention` with ``mha``'s configuration and (copied) weights."""
    if not isinstance(mha, nn.MultiheadAttention):
        raise TypeError(f"from_multihead_attention expects an nn.MultiheadAttention, got {type(mha).__name__}")
    if mha.bias_k is not None or mha.bias_v is not None:
        raise ValueError("from_multihead_attention: add_bias_kv=True (bias_k / bias_v) is not supported")
    if mha.add_zero_attn:
        raise ValueError("from_multihead_attention: add_zero_attn=True is not supported")
    ref = mha.out_proj.weight
    mod = IntegralMultiheadAttention(
        mha.embed_dim,
        mha.num_heads,
        dropout=mha.dropout,
        bias=mha.in_proj_bias is not None,
        kdim=mha.kdim,
        vdim=mha.vdim,
        batch_first=mha.batch_first,
        device=ref.device,
        dtype=ref.dtype,
    )
    if (mha.in_proj_bias is None) != (mha.out_proj.bias is None):
        raise ValueError("from_multihead_attention: in_proj_bias and out_proj.bias must both exist or both be None")
    with torch.no_grad():
        mod.load_state_dict(mha.state_dict(), strict=True)
    mod.train(mha.training)
    return mod


# ======================================================================================
# nn.Conv1d / nn.Conv2d
# ======================================================================================
def _ntuple(x, n: int, name: str) -> Tuple[int, ...]:
    if isinstance(x, int) and not isinstance(x, bool):
        return (x,) * n
    t = tuple(x)
    if len(t) == 1 and n > 1:
        t = t * n
    if len(t) != n or not all(isinstance(v, int) and not isinstance(v, bool) for v in t):
        raise ValueError(f"{name} must be an int or a tuple of {n} ints, got {x!r}")
    return t


class _IntegralConvNd(nn.Module):
    _nd = 0

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        nd = self._nd
        name = type(self).__name__
        if groups != 1:
            raise ValueError(f"{name} supports groups=1 only, got groups={groups}")
        if padding_mode != "zeros":
            raise ValueError(f"{name} supports padding_mode='zeros' only, got {padding_mode!r}")
        for n_, v_ in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v_, int) or v_ < 1:
                raise ValueError(f"{name}: {n_} must be a positive int, got {v_!r}")
        kernel_size = _ntuple(kernel_size, nd, "kernel_size")
        stride = _ntuple(stride, nd, "stride")
        dilation = _ntuple(dilation, nd, "dilation")
        if min(kernel_size) < 1 or min(stride) < 1 or min(dilation) < 1:
            raise ValueError(
                f"{name}: kernel_size, stride and dilation must be >= 1, got {kernel_size}, {stride}, {dilation}"
            )
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"{name}: padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
            if padding == "same" and any(s != 1 for s in stride):
                raise ValueError(f"{name}: padding='same' is not supported for strided convolutions")
        else:
            padding = _ntuple(padding, nd, "padding")
            if min(padding) < 0:
                raise ValueError(f"{name}: padding must be >= 0, got {padding}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = 1
        self.padding_mode = "zeros"

        factory_kwargs = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty((out_channels, in_channels, *kernel_size), **factory_kwargs))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory_kwargs))
        else:
            self.register_parameter("bias", None)

        # Fixed structure of the kernel: one head per tap, one-hot offset embedding, W2 = I.
        taps = math.prod(kernel_size)
        box = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]  # window extent per dim
        strides = [1] * nd
        for d in range(nd - 2, -1, -1):
            strides[d] = strides[d + 1] * box[d + 1]
        table = torch.zeros((math.prod(box), taps), **factory_kwargs)
        for h, tap in enumerate(torch.cartesian_prod(*[torch.arange(k) for k in kernel_size]).view(taps, nd).tolist()):
            idx = sum(tap[d] * dilation[d] * strides[d] for d in range(nd))
            table[idx, h] = 1.0
        self.register_buffer("offset_table", table, persistent=False)
        self.register_buffer("kernel_W2", torch.eye(taps, **factory_kwargs), persistent=False)
        self.window = tuple((0, (k - 1) * d) for k, d in zip(kernel_size, dilation))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # as torch's _ConvNd
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_channels * math.prod(self.kernel_size)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0,) * self._nd:
            s += f", padding={self.padding}"
        if self.dilation != (1,) * self._nd:
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        return s

    def _pads(self):
        if self.padding == "valid":
            return [(0, 0)] * self._nd
        if self.padding == "same":
            out = []
            for k, d in zip(self.kernel_size, self.dilation):
                total = d * (k - 1)
                out.append((total // 2, total - total // 2))  # torch pads the extra one on the right
            return out
        return [(p, p) for p in self.padding]

    def forward(self, input: Tensor) -> Tensor:
        nd = self._nd
        name = type(self).__name__
        if not isinstance(input, Tensor) or input.dim() not in (nd + 1, nd + 2):
            raise ValueError(
                f"{name} expects a {nd + 2}-D (batched) or {nd + 1}-D (unbatched) input, "
                f"got {None if not isinstance(input, Tensor) else tuple(input.shape)}"
            )
        is_batched = input.dim() == nd + 2
        x = input if is_batched else input.unsqueeze(0)
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{name}: expected input with {self.in_channels} channels (dim {1 if is_batched else 0}), "
                f"got shape {tuple(input.shape)}"
            )
        B = x.shape[0]
        spatial = tuple(x.shape[2:])
        pads = self._pads()
        out_sizes = []
        for L, (pl, pr), k, s, d in zip(spatial, pads, self.kernel_size, self.stride, self.dilation):
            n = (L + pl + pr - d * (k - 1) - 1) // s + 1
            if n < 1:
                raise ValueError(
                    f"{name}: padded input size {L + pl + pr} is smaller than the dilated kernel size "
                    f"{d * (k - 1) + 1} (input shape {tuple(input.shape)})"
                )
            out_sizes.append(n)
        dev, dt = x.device, x.dtype
        # query positions on the strided grid, key positions = input indices (row-major flattening)
        qg = [torch.arange(n, device=dev, dtype=dt) * s - pl for n, s, (pl, _) in zip(out_sizes, self.stride, pads)]
        kg = [torch.arange(L, device=dev, dtype=dt) for L in spatial]
        q_pos = torch.stack(torch.meshgrid(*qg, indexing="ij"), dim=-1).reshape(1, -1, nd)
        k_pos = torch.stack(torch.meshgrid(*kg, indexing="ij"), dim=-1).reshape(1, -1, nd)
        # values: head h (= tap h) sees W[:, :, tap h] @ x_j
        xf = x.flatten(2).transpose(1, 2)  # (B, M, Cin)
        w = self.weight.flatten(2)  # (Cout, Cin, taps)
        v = torch.einsum("bmc,och->bhmo", xf, w)  # (B, H, M, Cout)
        y = _functional.integral_transform(
            v=v,
            W2=self.kernel_W2,
            activation="relu",
            offset_table=self.offset_table,
            q_pos=q_pos,
            k_pos=k_pos,
            normalize="none",
            window=self.window,
        )  # (B, H, N, Cout)
        y = y.sum(dim=1)
        if self.bias is not None:
            y = y + self.bias
        y = y.transpose(1, 2).reshape(B, self.out_channels, *out_sizes)
        return y if is_batched else y.squeeze(0)


class IntegralConv1d(_IntegralConvNd):
    """``nn.Conv1d`` (groups=1, zero padding) computed by the integral transform."""

    _nd = 1


class IntegralConv2d(_IntegralConvNd):
    """``nn.Conv2d`` (groups=1, zero padding) computed by the integral transform."""

    _nd = 2


def _from_conv(conv, torch_cls, cls):
    if not isinstance(conv, torch_cls):
        raise TypeError(f"expected an nn.{torch_cls.__name__}, got {type(conv).__name__}")
    if conv.groups != 1:
        raise ValueError(f"{torch_cls.__name__} with groups={conv.groups} is not supported (groups=1 only)")
    if conv.padding_mode != "zeros":
        raise ValueError(
            f"{torch_cls.__name__} with padding_mode={conv.padding_mode!r} is not supported ('zeros' only)"
        )
    if getattr(conv, "transposed", False):
        raise ValueError("transposed convolutions are not supported")
    mod = cls(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        mod.load_state_dict(conv.state_dict(), strict=True)
    mod.train(conv.training)
    return mod


def from_conv1d(conv: nn.Conv1d) -> IntegralConv1d:
    """Build an :class:`IntegralConv1d` with ``conv``'s configuration and (copied) weights."""
    return _from_conv(conv, nn.Conv1d, IntegralConv1d)


def from_conv2d(conv: nn.Conv2d) -> IntegralConv2d:
    """Build an :class:`IntegralConv2d` with ``conv``'s configuration and (copied) weights."""
    return _from_conv(conv, nn.Conv2d, IntegralConv2d)


# IntegralTransform.from_* are the converters above. They are attached here rather than imported
# by transform.py: the converters build on the layer, so the layer's module cannot import them
# without a cycle (importing itnet_ext.nn, or any of its modules, runs this).
IntegralTransform.from_multihead_attention = staticmethod(from_multihead_attention)
IntegralTransform.from_conv1d = staticmethod(from_conv1d)
IntegralTransform.from_conv2d = staticmethod(from_conv2d)
