"""Layers: the general :class:`IntegralTransform` and exact converters."""
from .transform import IntegralTransform
from .convert import (
    IntegralConv1d,
    IntegralConv2d,
    IntegralMultiheadAttention,
    from_conv1d,
    from_conv2d,
    from_multihead_attention,
)

__all__ = [
    "IntegralTransform",
    "IntegralMultiheadAttention",
    "IntegralConv1d",
    "IntegralConv2d",
    "from_multihead_attention",
    "from_conv1d",
    "from_conv2d",
]
