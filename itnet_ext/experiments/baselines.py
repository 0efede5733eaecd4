"""Baselines for the experiments, in plain PyTorch (no itnet kernels except the Mamba scan),
and the parameter matching that makes the comparison fair.

- :class:`ViT`: pre-norm transformer over image patches (the PatchEncoder's patching) with a
  learned absolute position embedding, mean pooling.
- :class:`PointTransformer`: the same trunk over points embedded by an MLP, no position
  embedding (a set model: the coordinates are the features), mean pooling.
- :class:`CausalTransformer`: the same trunk over tokens with a causal mask and a learned
  position embedding; per-token logits.
- :class:`CNN`: a small VGG-style convolutional net for 8x8 images.
- :class:`PointNet`: shared per-point MLP, max pooling, MLP classifier (Qi et al. 2017,
  without the input / feature transform nets).
- :class:`GRUModel`: embedding, stacked ``nn.GRU``, linear head.
- :class:`MambaModel`: embedding, pre-norm residual :class:`~itnet_ext.recurrence.MambaMixer`
  blocks (Mamba-1), final norm, linear head.

:func:`match_width` picks the width of a baseline whose parameter count is nearest a
target (the ITNet model's), so each comparison is at (nearly) equal size.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional, Tuple

import torch
from torch import Tensor, nn

from ..recurrence.mamba import MambaMixer

__all__ = ["count_parameters", "match_width", "TransformerTrunk", "ViT", "PointTransformer",
           "CausalTransformer", "CNN", "PointNet", "GRUModel", "MambaModel"]


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values()
               if p.requires_grad)


def match_width(build: Callable[[int], nn.Module], target: int, widths: Iterable[int], *,
                tolerance: float = 0.15) -> Tuple[int, int]:
    """The width in ``widths`` (ascending; the count must grow with the width) whose
    ``build(width)`` has the parameter count nearest ``target``: ``(width, count)``. Raises ValueError if even that one is more than
    ``tolerance`` (relative) away, so an unfair comparison never runs silently."""
    best = None
    for w in widths:
        n = count_parameters(build(w))
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (w, n)
        elif n > target:         # counts grow with the width: past the target, stop building
            break
    if best is None:
        raise ValueError("match_width: no widths given")
    if abs(best[1] - target) > tolerance * target:
        raise ValueError(f"match_width: nearest count {best[1]} (width {best[0]}) is more "
                         f"than {tolerance:.0%} from the target {target}; widen the range")
    return best


# --------------------------------------------------------------------------------------
# transformers
# --------------------------------------------------------------------------------------
class _Block(nn.Module):
    """Pre-norm transformer block, the same layout as an ITNet block with attention as the
    mixer: x + MHA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(round(mlp_ratio * dim))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, attn_mask=attn_mask, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TransformerTrunk(nn.Module):
    """``depth`` pre-norm blocks and a final LayerNorm over (B, N, dim) tokens; ``causal``
    masks keys after the query."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, *,
                 causal: bool = False):
        super().__init__()
        self.causal = causal
        self.blocks = nn.ModuleList(_Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        mask = None
        if self.causal:
            N = x.shape[1]
            mask = torch.ones(N, N, dtype=torch.bool, device=x.device).triu(1)   # True = drop
        for blk in self.blocks:
            x = blk(x, mask)
        return self.norm(x)


class ViT(nn.Module):
    """Images (B, C, H, W) -> logits: non-overlapping ``patch_size`` patches (a strided
    conv, as :class:`~itnet_ext.models.PatchEncoder`), learned absolute position embedding,
    transformer, mean pool, linear head."""

    def __init__(self, image_size: int, patch_size: int, in_channels: int, num_classes: int,
                 dim: int, depth: int = 2, heads: int = 4, mlp_ratio: float = 4.0):
        super().__init__()
        n = (image_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.pos = nn.Parameter(torch.randn(1, n, dim) * 0.02)
        self.trunk = TransformerTrunk(dim, depth, heads, mlp_ratio)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        x = self.proj(images).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.trunk(x).mean(1))


class PointTransformer(nn.Module):
    """Points (B, N, 3) -> logits: per-point MLP embedding, transformer (global attention,
    no positional encoding: the coordinates are the input features), mean pool, head."""

    def __init__(self, num_classes: int, dim: int, depth: int = 2, heads: int = 4,
                 mlp_ratio: float = 4.0, hidden: int = 64):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(3, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.trunk = TransformerTrunk(dim, depth, heads, mlp_ratio)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, points: Tensor) -> Tensor:
        return self.head(self.trunk(self.embed(points)).mean(1))


class CausalTransformer(nn.Module):
    """Tokens (B, T) -> logits (B, T, vocab): embedding plus learned position embedding
    (up to ``max_len``), causal transformer, linear head."""

    def __init__(self, vocab_size: int, dim: int, depth: int = 2, heads: int = 4,
                 mlp_ratio: float = 4.0, max_len: int = 512):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.randn(1, max_len, dim) * 0.02)
        self.trunk = TransformerTrunk(dim, depth, heads, mlp_ratio, causal=True)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        T = tokens.shape[1]
        if T > self.pos.shape[1]:
            raise ValueError(f"sequence length {T} exceeds max_len {self.pos.shape[1]}")
        return self.head(self.trunk(self.embed(tokens) + self.pos[:, :T]))


# --------------------------------------------------------------------------------------
# convolutional / point / recurrent
# --------------------------------------------------------------------------------------
class CNN(nn.Module):
    """8x8 (or any size divisible by 4) images -> logits: two conv-conv-maxpool stages of
    widths ``width`` and ``2 * width`` (3x3, GELU), global average pool, linear head."""

    def __init__(self, in_channels: int, num_classes: int, width: int):
        super().__init__()
        w = width

        def conv(a, b):
            return [nn.Conv2d(a, b, 3, padding=1), nn.GELU()]
        self.features = nn.Sequential(*conv(in_channels, w), *conv(w, w), nn.MaxPool2d(2),
                                      *conv(w, 2 * w), *conv(2 * w, 2 * w), nn.MaxPool2d(2))
        self.head = nn.Linear(2 * w, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images).mean((2, 3)))


class PointNet(nn.Module):
    """Points (B, N, 3) -> logits: shared MLP 3 -> w -> w -> 4w per point, max over the
    points (order invariance), MLP 4w -> 2w -> classes."""

    def __init__(self, num_classes: int, width: int):
        super().__init__()
        w = width
        self.point_mlp = nn.Sequential(nn.Linear(3, w), nn.GELU(), nn.Linear(w, w), nn.GELU(),
                                       nn.Linear(w, 4 * w))
        self.head = nn.Sequential(nn.GELU(), nn.Linear(4 * w, 2 * w), nn.GELU(),
                                  nn.Linear(2 * w, num_classes))

    def forward(self, points: Tensor) -> Tensor:
        return self.head(self.point_mlp(points).amax(1))


class GRUModel(nn.Module):
    """Tokens (B, T) -> logits (B, T, vocab): embedding, ``layers`` stacked GRUs of width
    ``hidden``, linear head. A classic gated RNN: selective, but with a fixed-size state
    and sequential training."""

    def __init__(self, vocab_size: int, hidden: int, layers: int = 2,
                 embed_dim: Optional[int] = None):
        super().__init__()
        e = embed_dim or hidden
        self.embed = nn.Embedding(vocab_size, e)
        self.rnn = nn.GRU(e, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.rnn(self.embed(tokens))[0])


class MambaModel(nn.Module):
    """Tokens (B, T) -> logits (B, T, vocab): embedding, ``depth`` blocks
    ``x + MambaMixer(LN(x))`` (the mamba_ssm block layout, without its MLP), final
    LayerNorm, linear head."""

    def __init__(self, vocab_size: int, dim: int, depth: int = 2, d_state: int = 16,
                 expand: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.mixers = nn.ModuleList(MambaMixer(dim, d_state=d_state, expand=expand)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)
        for norm, mixer in zip(self.norms, self.mixers):
            x = x + mixer(norm(x))
        return self.head(self.norm(x))
