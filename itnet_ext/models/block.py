"""One ITNet block: pre-norm, the integral transform (any strategy), residual, MLP, residual.

    x = x + dropout(mixer(norm1(x), positions))
    x = x + mlp(norm2(x))

The mixer is :class:`~itnet_ext.IntegralTransform` evaluated by the block's ``method``
(``"dense"``, ``"sampled"``, ``"neighbors"``, ``"lowrank"``) or the causal decaying low-rank
:class:`~itnet_ext.models.ScanMixer` (``"scan"``); see :mod:`itnet_ext.models.config`.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ..nn.transform import IntegralTransform
from .config import METHODS, OperatorConfig
from .scan_mixer import ScanMixer

__all__ = ["ITNetBlock", "make_mixer"]

_DEFAULT_RANK = 16


def make_mixer(config: OperatorConfig, method: str, *, pos_dim: int = 1,
               causal: bool = False) -> nn.Module:
    """The token mixer of one block: an IntegralTransform for the kernel strategies, a
    ScanMixer for ``"scan"`` (causal only). Low-rank and scan layers have global (causal)
    support: ``window`` / ``offset_embedding`` of the config apply to the other methods."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    c = config
    rank = c.rank if c.rank is not None else _DEFAULT_RANK
    if method == "scan":
        if not causal:
            raise ValueError("method='scan' is the causal decaying kernel: it needs a causal "
                             "stack (causal=True); use method='lowrank' for global support")
        return ScanMixer(c.embed_dim, c.num_heads, rank)
    global_support = method == "lowrank"
    kw = dict(method=method)
    if method == "lowrank":
        kw["rank"] = rank
    elif method == "sampled":
        if c.samples is None:
            raise ValueError("method='sampled' needs OperatorConfig.samples (keys per query)")
        kw.update(samples=c.samples, proposal=c.proposal)
    return IntegralTransform(
        c.embed_dim, c.num_heads, kernel_hidden=c.kernel_hidden, content=c.content,
        activation=c.activation, normalize=c.normalize, causal=causal,
        window=None if global_support else c.window, pos_dim=pos_dim,
        offset_embedding=c.offset_embedding and not global_support,
        relative_positions=c.relative_positions, batch_first=True, **kw)


class ITNetBlock(nn.Module):
    """Pre-norm residual block around one integral transform and a feed-forward MLP.

    ``forward(x (B, N, E), pos (B or 1, N, pos_dim), *, padding_mask=None, neighbors=None,
    generator=None)``: ``padding_mask`` (B, N) bool (True = padded token, not a key);
    ``neighbors`` the pairs of a ``"neighbors"`` block (see IntegralTransform.forward);
    ``generator`` the draws of a ``"sampled"`` block.
    """

    def __init__(self, config: OperatorConfig, method: str = "dense", *, pos_dim: int = 1,
                 causal: bool = False):
        super().__init__()
        E = config.embed_dim
        self.method, self.causal = method, causal
        self.norm1 = nn.LayerNorm(E)
        self.mixer = make_mixer(config, method, pos_dim=pos_dim, causal=causal)
        self.drop = nn.Dropout(config.dropout)
        hidden = max(1, int(round(config.mlp_ratio * E)))
        self.norm2 = nn.LayerNorm(E)
        self.mlp = nn.Sequential(nn.Linear(E, hidden), nn.GELU(), nn.Dropout(config.dropout),
                                 nn.Linear(hidden, E), nn.Dropout(config.dropout))

    def extra_repr(self) -> str:
        return f"method={self.method!r}, causal={self.causal}"

    def forward(self, x: Tensor, pos: Optional[Tensor] = None, *,
                padding_mask: Optional[Tensor] = None, neighbors=None,
                generator=None) -> Tensor:
        h = self.norm1(x)
        if self.method == "scan":
            h = self.mixer(h, padding_mask=padding_mask)
        else:
            h = self.mixer(h, query_pos=pos, key_padding_mask=padding_mask,
                           neighbors=neighbors if self.method == "neighbors" else None,
                           generator=generator if self.method == "sampled" else None)
        x = x + self.drop(h)
        return x + self.mlp(self.norm2(x))
