"""The ITNet stack: a modality encoder, ``depth`` blocks sharing one operator configuration
(each with its own evaluation method), a final norm and an optional head; and the
two-input pair classifier of NLVR2-style tasks."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..sparse.neighbors import knn_graph
from .block import ITNetBlock
from .config import OperatorConfig, layer_methods
from .encoders import Tokens

__all__ = ["ITNet", "PairClassifier"]

_POOLS = ("mean", "none")


def masked_mean(x: Tensor, padding_mask: Optional[Tensor]) -> Tensor:
    """Mean over the tokens that are not padding: (B, N, E) -> (B, E)."""
    if padding_mask is None:
        return x.mean(1)
    keep = (~padding_mask).to(x.dtype)[..., None]
    return (x * keep).sum(1) / keep.sum(1).clamp_min(1.0)


class ITNet(nn.Module):
    """Encoder -> ITNet blocks -> LayerNorm -> [pool] -> [head].

    Args:
        encoder: a module returning :class:`~itnet_ext.models.Tokens` with a ``pos_dim``
            attribute (:mod:`itnet_ext.models.encoders`).
        config: the :class:`OperatorConfig` all blocks share.
        depth: number of blocks.
        methods: one evaluation method for every block, or one per block (e.g.
            ``["neighbors", "neighbors", "dense"]``).
        causal: every block drops pairs j > i (token order); needed by ``"scan"``.
        num_outputs: size of a linear head (None: return the features).
        pool: ``"mean"`` (over non-padded tokens: one vector per input) or ``"none"``
            (per-token outputs, e.g. a language model's logits).

    ``forward(*encoder_inputs, generator=None, **encoder_kwargs)``: (B, num_outputs) with
    ``pool="mean"``, (B, N, num_outputs) with ``"none"`` (E instead of num_outputs without a
    head). ``generator`` seeds the ``"sampled"`` blocks' draws. ``"neighbors"`` blocks share
    one kNN graph (``config.neighbors_k`` keys) built per forward over the encoder positions.
    """

    def __init__(self, encoder: nn.Module, config: OperatorConfig, depth: int,
                 methods: Union[str, Sequence[str]] = "dense", *, causal: bool = False,
                 num_outputs: Optional[int] = None, pool: str = "mean"):
        super().__init__()
        if not isinstance(config, OperatorConfig):
            raise ValueError(f"config must be an OperatorConfig, got {type(config).__name__}")
        if not hasattr(encoder, "pos_dim"):
            raise ValueError("encoder must have a pos_dim attribute and return Tokens")
        if pool not in _POOLS:
            raise ValueError(f"pool must be one of {_POOLS}, got {pool!r}")
        self.config, self.methods, self.causal, self.pool = config, layer_methods(methods, depth), causal, pool
        self.encoder = encoder
        self.blocks = nn.ModuleList(ITNetBlock(config, m, pos_dim=encoder.pos_dim, causal=causal)
                                    for m in self.methods)
        self.norm = nn.LayerNorm(config.embed_dim)
        self.head = None if num_outputs is None else nn.Linear(config.embed_dim, num_outputs)

    def _neighbors(self, tokens: Tokens):
        if "neighbors" not in self.methods:
            return None
        B, N = tokens.x.shape[:2]
        pos = tokens.pos.detach().expand(B, N, tokens.pos.shape[-1])
        return knn_graph(pos, pos, min(self.config.neighbors_k, N))

    def features(self, *inputs, generator: Optional[torch.Generator] = None,
                 **encoder_kwargs) -> Tokens:
        """The normed token features (B, N, E) with the encoder's positions and padding."""
        tokens = self.encoder(*inputs, **encoder_kwargs)
        nb = self._neighbors(tokens)
        x = tokens.x
        for blk in self.blocks:
            x = blk(x, tokens.pos, padding_mask=tokens.padding_mask, neighbors=nb,
                    generator=generator)
        return Tokens(self.norm(x), tokens.pos, tokens.padding_mask)

    def forward(self, *inputs, generator: Optional[torch.Generator] = None, **encoder_kwargs):
        t = self.features(*inputs, generator=generator, **encoder_kwargs)
        out = masked_mean(t.x, t.padding_mask) if self.pool == "mean" else t.x
        return out if self.head is None else self.head(out)


class PairClassifier(nn.Module):
    """NLVR2-style head: one sentence about two images. The backbone (an :class:`ITNet` over
    a :class:`~itnet_ext.models.VisionLanguageEncoder`, ``pool="mean"``, no head) encodes
    (image_a, text) and (image_b, text); an MLP classifies their concatenated pooled features.
    """

    def __init__(self, backbone: ITNet, num_classes: int = 2, hidden: Optional[int] = None):
        super().__init__()
        if backbone.head is not None or backbone.pool != "mean":
            raise ValueError("backbone: expected an ITNet with pool='mean' and no head")
        E = backbone.config.embed_dim
        hidden = hidden or 2 * E
        self.backbone = backbone
        self.classifier = nn.Sequential(nn.Linear(2 * E, hidden), nn.GELU(),
                                        nn.Linear(hidden, num_classes))

    def forward(self, images_a: Tensor, images_b: Tensor, tokens: Tensor, **kw) -> Tensor:
        both = self.backbone(torch.cat([images_a, images_b], 0), torch.cat([tokens, tokens], 0), **kw)
        fa, fb = both.chunk(2, 0)
        return self.classifier(torch.cat([fa, fb], -1))
