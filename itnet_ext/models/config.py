"""The one operator configuration an ITNet stack shares across its layers.

Every layer of a stack evaluates the same kind of kernel (docs/design.md section 1: content
term, pair MLP of width ``kernel_hidden``, normalization); what may differ per layer is the
evaluation strategy (section 2), the ``method``:

- ``"dense"``: exact, every key of the support (tiled fusion);
- ``"sampled"``: importance-weighted Monte Carlo, ``samples`` keys per query;
- ``"neighbors"``: the pairs of a k-nearest-neighbour graph over the positions
  (``neighbors_k`` keys per query), built once per forward and shared by the layers;
- ``"lowrank"``: learned factorization with ``rank`` features per head (global support,
  causal prefix sums when the stack is causal);
- ``"scan"``: the causal low-rank kernel with a learned, input-dependent decay
  (:class:`~itnet_ext.models.ScanMixer`, the selective-scan family), ``rank`` states per
  channel. Causal stacks only.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence, Union

__all__ = ["OperatorConfig", "METHODS", "layer_methods"]

METHODS = ("dense", "sampled", "neighbors", "lowrank", "scan")


@dataclass(frozen=True)
class OperatorConfig:
    """The integral transform every block of an ITNet stack uses.

    Args:
        embed_dim: model width ``E``.
        num_heads: heads ``H`` (divides ``embed_dim``).
        kernel_hidden: pair-MLP width ``R`` (0: content term only, i.e. attention).
        content: the content term ``<q_i, k_j> / sqrt(Dh)``.
        activation: pair-MLP activation (``"relu"``, ``"gelu"``, ``"silu"``).
        normalize: ``"softmax"`` or ``"none"``.
        relative_positions: the pair MLP sees ``p_i - p_j`` (translation invariance).
        window: compact support (offsets ``p_j - p_i``), forms of
            :class:`~itnet_ext.IntegralTransform`'s ``window``; dense / sampled / neighbors
            layers only (the low-rank and scan layers have global causal-or-not support).
        offset_embedding: learned offset table over an integer ``window`` (grids).
        rank: features per head of ``"lowrank"`` layers, states per channel of ``"scan"``
            layers (default 16 for both when such a layer is asked for).
        samples, proposal: the ``"sampled"`` layers' Monte Carlo settings.
        neighbors_k: keys per query of the ``"neighbors"`` layers' kNN graph.
        mlp_ratio: hidden width of each block's feed-forward MLP, in units of ``embed_dim``.
        dropout: dropout after the mixer and inside the feed-forward MLP.
    """
    embed_dim: int
    num_heads: int = 4
    kernel_hidden: int = 16
    content: bool = True
    activation: str = "gelu"
    normalize: str = "softmax"
    relative_positions: bool = True
    window: object = None
    offset_embedding: bool = False
    rank: Optional[int] = None
    samples: Optional[int] = None
    proposal: str = "uniform"
    neighbors_k: int = 16
    mlp_ratio: float = 4.0
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("embed_dim", "num_heads", "neighbors_k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"OperatorConfig.{name} must be a positive int, got {v!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"OperatorConfig.embed_dim ({self.embed_dim}) must be divisible "
                             f"by num_heads ({self.num_heads})")
        if not (self.mlp_ratio > 0):
            raise ValueError(f"OperatorConfig.mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        if not (0.0 <= self.dropout < 1.0):
            raise ValueError(f"OperatorConfig.dropout must be in [0, 1), got {self.dropout!r}")

    def replace(self, **changes) -> "OperatorConfig":
        return replace(self, **changes)


def layer_methods(methods: Union[str, Sequence[str]], depth: int) -> tuple:
    """``methods`` as one method per layer: a single name is used by every layer."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive int, got {depth!r}")
    ms = (methods,) * depth if isinstance(methods, str) else tuple(methods)
    if len(ms) != depth:
        raise ValueError(f"methods: expected one method per layer ({depth}), got {len(ms)}")
    for m in ms:
        if m not in METHODS:
            raise ValueError(f"methods: each must be one of {METHODS}, got {m!r}")
    return ms
