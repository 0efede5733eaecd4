"""Light modality encoders: each turns raw input into tokens on positions, the only thing
the shared ITNet stack needs (the kernel sees positions directly, docs/design.md section 1).

Every encoder returns :class:`Tokens` ``(x (B, N, E), pos (B or 1, N, pos_dim),
padding_mask (B, N) bool or None)`` and has a ``pos_dim`` attribute.

- :class:`PatchEncoder`: images, non-overlapping patches on the integer 2-D grid
  (row, col), so an integer ``window`` and the offset embedding see grid offsets.
- :class:`TokenEncoder`: token ids on the 1-D index (a causal stack makes it a language
  model).
- :class:`PointEncoder`: point sets on their 3-D coordinates (for the neighbours / sampled
  methods).
- :class:`VisionLanguageEncoder`: image patches and text tokens in one sequence with a
  modality embedding; positions (row, col, 0) for patches and (0, 0, k + 1) for the k-th
  token, so the kernel can tell the two apart by position as well as by feature.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

__all__ = ["Tokens", "PatchEncoder", "TokenEncoder", "PointEncoder", "VisionLanguageEncoder"]


class Tokens(NamedTuple):
    x: Tensor
    pos: Tensor
    padding_mask: Optional[Tensor]


def _pair(v, name):
    t = (v, v) if isinstance(v, int) else tuple(v)
    if len(t) != 2 or any(isinstance(a, bool) or not isinstance(a, int) or a < 1 for a in t):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {v!r}")
    return t


class PatchEncoder(nn.Module):
    """Images (B, C, H, W) -> one token per ``patch_size`` patch, on the (row, col) grid.

    Args: ``image_size`` (int or (H, W), divisible by the patch size), ``patch_size``,
    ``in_channels``, ``embed_dim``; ``abs_pos``: also add a learned per-patch embedding
    (off by default: the kernel already sees the positions).
    """
    pos_dim = 2

    def __init__(self, image_size, patch_size, in_channels: int, embed_dim: int, *,
                 abs_pos: bool = False):
        super().__init__()
        self.image_size, self.patch_size = _pair(image_size, "image_size"), _pair(patch_size, "patch_size")
        (H, W), (ph, pw) = self.image_size, self.patch_size
        if H % ph or W % pw:
            raise ValueError(f"image_size {self.image_size} must be divisible by patch_size "
                             f"{self.patch_size}")
        self.in_channels = in_channels
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=self.patch_size,
                              stride=self.patch_size)
        gh, gw = H // ph, W // pw
        self.grid = (gh, gw)
        rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        self.register_buffer("pos", torch.stack([rows, cols], -1).reshape(1, gh * gw, 2).float(),
                             persistent=False)
        self.abs_pos = nn.Parameter(torch.zeros(1, gh * gw, embed_dim)) if abs_pos else None

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def forward(self, images: Tensor) -> Tokens:
        C, (H, W) = self.in_channels, self.image_size
        if not isinstance(images, Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != (C, H, W):
            raise ValueError(f"images: expected (B, {C}, {H}, {W}), got "
                             f"{tuple(images.shape) if isinstance(images, Tensor) else type(images)}")
        x = self.proj(images).flatten(2).transpose(1, 2)               # (B, gh * gw, E)
        if self.abs_pos is not None:
            x = x + self.abs_pos
        return Tokens(x, self.pos.to(x.dtype), None)


class TokenEncoder(nn.Module):
    """Token ids (B, T) -> embeddings on positions 0..T-1; ``padding_idx`` tokens are padding
    (not keys)."""
    pos_dim = 1

    def __init__(self, vocab_size: int, embed_dim: int, *, padding_idx: Optional[int] = None):
        super().__init__()
        self.vocab_size, self.padding_idx = vocab_size, padding_idx
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)

    def forward(self, tokens: Tensor) -> Tokens:
        if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError("tokens: expected a (B, T) int64 tensor, got "
                             f"{(tokens.dtype, tuple(tokens.shape)) if isinstance(tokens, Tensor) else type(tokens)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(f"tokens: ids must be in [0, {self.vocab_size}), got "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")
        T = tokens.shape[1]
        x = self.embed(tokens)
        pos = torch.arange(T, device=tokens.device, dtype=x.dtype).view(1, T, 1)
        pad = None if self.padding_idx is None else tokens.eq(self.padding_idx)
        return Tokens(x, pos, pad)


class PointEncoder(nn.Module):
    """Point sets: coordinates (B, N, 3) [and per-point features (B, N, F)] -> tokens from a
    small MLP over [xyz; features], positioned at xyz. ``lengths`` (B,) marks the valid
    points of padded sets (the rest are padding)."""
    pos_dim = 3

    def __init__(self, embed_dim: int, in_features: int = 0, hidden: int = 64):
        super().__init__()
        self.in_features = in_features
        self.mlp = nn.Sequential(nn.Linear(3 + in_features, hidden), nn.GELU(),
                                 nn.Linear(hidden, embed_dim))

    def forward(self, points: Tensor, features: Optional[Tensor] = None,
                lengths: Optional[Tensor] = None) -> Tokens:
        if not isinstance(points, Tensor) or points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError("points: expected (B, N, 3) coordinates, got "
                             f"{tuple(points.shape) if isinstance(points, Tensor) else type(points)}")
        B, N, _ = points.shape
        if self.in_features:
            if features is None or features.shape != (B, N, self.in_features):
                raise ValueError(f"features: expected (B, N, {self.in_features}) = "
                                 f"({B}, {N}, {self.in_features}), got "
                                 f"{None if features is None else tuple(features.shape)}")
            inp = torch.cat([points, features.to(points.dtype)], -1)
        elif features is not None:
            raise ValueError("features: this encoder was built with in_features=0")
        else:
            inp = points
        pad = None
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=points.device)
            if lengths.shape != (B,) or bool((lengths < 1).any()) or bool((lengths > N).any()):
                raise ValueError(f"lengths: expected (B,) = ({B},) counts in [1, {N}]")
            pad = torch.arange(N, device=points.device)[None, :] >= lengths[:, None]
        return Tokens(self.mlp(inp), points, pad)


class VisionLanguageEncoder(nn.Module):
    """(images (B, C, H, W), tokens (B, T)) -> patch tokens then text tokens, each plus its
    modality embedding; text ``padding_idx`` tokens are padding. Positions: (row, col, 0)
    for a patch, (0, 0, k + 1) for the k-th text token (pos_dim 3)."""
    pos_dim = 3

    def __init__(self, image_size, patch_size, in_channels: int, vocab_size: int,
                 embed_dim: int, *, padding_idx: Optional[int] = 0):
        super().__init__()
        self.image = PatchEncoder(image_size, patch_size, in_channels, embed_dim)
        self.text = TokenEncoder(vocab_size, embed_dim, padding_idx=padding_idx)
        self.modality = nn.Embedding(2, embed_dim)

    def forward(self, images: Tensor, tokens: Tensor) -> Tokens:
        img, txt = self.image(images), self.text(tokens)
        if img.x.shape[0] != txt.x.shape[0]:
            raise ValueError(f"images and tokens: batch sizes differ ({img.x.shape[0]} vs "
                             f"{txt.x.shape[0]})")
        B, P, T = img.x.shape[0], img.x.shape[1], txt.x.shape[1]
        x = torch.cat([img.x + self.modality.weight[0], txt.x + self.modality.weight[1]], 1)
        zero = img.pos.new_zeros(1, P, 1)
        p_img = torch.cat([img.pos, zero], -1)
        k = torch.arange(1, T + 1, device=x.device, dtype=img.pos.dtype).view(1, T, 1)
        p_txt = torch.cat([k.new_zeros(1, T, 2), k], -1)
        pos = torch.cat([p_img, p_txt], 1)
        pad = None
        if txt.padding_mask is not None:
            pad = torch.cat([txt.padding_mask.new_zeros(B, P), txt.padding_mask], 1)
        return Tokens(x, pos, pad)
