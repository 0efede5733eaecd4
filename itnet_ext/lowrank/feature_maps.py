r"""Feature maps of the low-rank integral transform (docs/design.md section 2, lowrank).

A feature map takes per-head features (B, H, N, Dk) to (B, H, N, F); the low-rank transform
uses l(i, j) ~= phi(q_i) . psi(k_j). Deterministic maps are plain functions:

    identity      phi(x) = x                       (F = Dk; exact for the content term q.k)
    elu_plus_one  phi(x) = elu(x) + 1 > 0          (F = Dk; "linear attention")
    relu          phi(x) = max(x, 0) >= 0          (F = Dk)

:class:`PositiveRandomFeatures` is FAVOR+ (Choromanski et al., "Rethinking Attention with
Performers", ICLR 2021): positive random features for the softmax kernel

    SM(q, k) = exp(q . k / sqrt(d)),

the kernel of ``reference.integral_transform`` in softmax mode with its default scale
1 / sqrt(Dk). Each input is scaled by d^(-1/4) on both sides (x' = x d^(-1/4), so that
q' . k' = q . k / sqrt(d)) and, with m rows w_r ~ N(0, I_d) of the projection W,

    phi(x) = exp(W x' - |x'|^2 / 2) / sqrt(m),    E[phi(q) . phi(k)] = exp(q . k / sqrt(d)),

because E[exp(w . (q' + k'))] = exp(|q' + k'|^2 / 2). Every feature is positive, so the
softmax-mode denominator phi(q_i) . sum_j phi(k_j) is a sum of positive terms.

Stabilizer. exp(W x' - |x'|^2/2) overflows / underflows for large inputs, so a constant c
is subtracted from the exponent: phi_c(x) = exp(W x' - |x'|^2/2 - c) / sqrt(m). The estimate
of a softmax-normalized output,

    y_i = sum_j (phi_i . psi_j) v_j / sum_j (phi_i . psi_j),

is unchanged by a factor exp(-c_i) on phi_i (numerator and denominator both scale by it), so
for queries c may depend on the row i: c_i = max over the features of row i's exponent (the
largest feature of every query row is then exactly 1/sqrt(m): no row underflows to 0). A
factor exp(-c_j) on psi_j, however, reweights key j against the other keys, which changes the
output, so keys must share one constant: the max of the exponent over all keys and features
of the (b, h) slice (each output is normalized within its own (b, h), so a constant per
slice cancels just as a global one would). The stabilizer is detached: the normalized output
does not depend on it, so its exact gradient is 0. In ``none`` mode nothing cancels and
the transform calls the map with ``stabilize=False``.

Orthogonal features (``orthogonal=True``): the rows are drawn in blocks of d exactly
orthogonal directions (Q of the QR factorization of a d x d Gaussian matrix, with the signs
fixed by diag(R) so that Q is Haar-distributed), each row rescaled by an independent
chi_d-distributed norm (the norm of a fresh N(0, I_d) vector). Each row is then marginally
N(0, I_d), so the estimate stays unbiased, and the orthogonality within a block lowers its
variance. ``orthogonal=False`` draws i.i.d. Gaussian rows.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._common import names as _names

__all__ = ["identity", "elu_plus_one", "relu", "PositiveRandomFeatures", "FEATURE_MAPS",
           "make_feature_map", "DETERMINISTIC", "DETERMINISTIC_NAMES"]


def identity(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = x: with it the low-rank transform is the content term q . k exactly."""
    return x


def elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1, strictly positive (Katharopoulos et al. 2020)."""
    return F.elu(x) + 1


def relu(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = max(x, 0); nonnegative, so a row may be all zero (softmax output 0 there)."""
    return F.relu(x)


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


class PositiveRandomFeatures(nn.Module):
    r"""FAVOR+ positive random features for exp(q . k / sqrt(dim)); see the module docstring.

    Args:
        dim: the input feature size d (Dk).
        num_features: m, the number of random features (output size F).
        orthogonal: orthogonal blocks (default) or i.i.d. Gaussian rows.
        redraw: if True, the transform draws a new projection once per call (before
            featurizing both queries and keys, which must share it) while the module is in
            training mode; see :meth:`maybe_redraw`. If False the projection stays fixed
            until :meth:`redraw` is called.
        generator: a ``torch.Generator`` the projections are drawn from (reproducibility).

    The projection is the buffer ``projection`` (m, d): saved with the state dict, moved by
    ``.to()``; it is cast to the input's dtype in :meth:`forward`.
    """

    def __init__(self, dim: int, num_features: int, *, orthogonal: bool = True,
                 redraw: bool = False, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.dim = _check_positive_int("dim", dim)
        self.num_features = _check_positive_int("num_features", num_features)
        self.orthogonal = bool(orthogonal)
        # Named auto_redraw: ``redraw`` is the method that draws.
        self.auto_redraw = bool(redraw)
        self.generator = generator
        self.register_buffer("projection", self._draw().to(torch.get_default_dtype()))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_features={self.num_features}, "
                f"orthogonal={self.orthogonal}, redraw={self.auto_redraw}")

    def _gaussian(self, *shape) -> torch.Tensor:
        device = self.generator.device if self.generator is not None else "cpu"
        return torch.randn(*shape, generator=self.generator, dtype=torch.float64,
                           device=device)

    def _draw(self) -> torch.Tensor:
        """A new (m, d) projection, in float64 (the caller casts it to the buffer's dtype)."""
        m, d = self.num_features, self.dim
        if not self.orthogonal:
            w = self._gaussian(m, d)
        else:
            blocks = []
            for _ in range(-(-m // d)):  # ceil(m / d) blocks of d orthonormal rows
                Q, R = torch.linalg.qr(self._gaussian(d, d))
                # Q's columns times sign(diag R) makes Q Haar-distributed (plain QR output
                # is biased by the sign convention); its transpose has orthonormal rows.
                sign = torch.sign(torch.diagonal(R))
                sign = torch.where(sign == 0, torch.ones_like(sign), sign)
                blocks.append((Q * sign).T)
            directions = torch.cat(blocks, 0)[:m]
            # Rows of a Gaussian matrix have chi_d norms: rescale the unit rows by
            # independent ones, so each row is marginally N(0, I_d) (unbiasedness).
            norms = torch.linalg.vector_norm(self._gaussian(m, d), dim=1, keepdim=True)
            w = directions * norms
        return w

    @torch.no_grad()
    def redraw(self) -> None:
        """Draw a new projection into the buffer (in place: device and dtype are kept)."""
        new = self._draw()
        self.projection.copy_(new.to(device=self.projection.device,
                                     dtype=self.projection.dtype))

    def maybe_redraw(self) -> None:
        """Called by the transform once per call: redraws when ``redraw=True`` and training."""
        if self.auto_redraw and self.training:
            self.redraw()

    def forward(self, x: torch.Tensor, *, is_query: bool = True,
                stabilize: bool = True) -> torch.Tensor:
        """x (..., N, dim) -> positive features (..., N, num_features).

        ``is_query`` selects the stabilizer (a per-row max for queries, one max over all rows
        and features of each (..., N, F) slice for keys); ``stabilize=False`` gives the
        unstabilized, unbiased features (needed when nothing normalizes the output).
        """
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise ValueError(f"x: expected a tensor (..., N, {self.dim}), got "
                             f"{type(x).__name__ if not isinstance(x, torch.Tensor) else tuple(x.shape)}")
        if x.shape[-1] != self.dim:
            raise ValueError(f"x: expected last dim = dim = {self.dim}, got shape "
                             f"{tuple(x.shape)}")
        xs = x * self.dim ** -0.25
        w = self.projection.to(device=x.device, dtype=x.dtype)
        expo = xs @ w.T - 0.5 * (xs * xs).sum(-1, keepdim=True)          # (..., N, m)
        if stabilize and expo.numel() > 0:
            dims = (-1,) if is_query else (-2, -1)
            expo = expo - expo.detach().amax(dim=dims, keepdim=True)
        return torch.exp(expo) / math.sqrt(self.num_features)


# The deterministic maps' PyTorch formulas (the oracle side of csrc/lowrank/feature.h), by
# their names in the kernels' table; "favor+" is the module above.
DETERMINISTIC: dict = {"identity": identity, "elu+1": elu_plus_one, "relu": relu}
DETERMINISTIC_NAMES = tuple(DETERMINISTIC)

# Names accepted wherever a feature map may be given by name: the kernels' table, read from
# the compiled library (a map the kernels apply must have an oracle here, and vice versa).
FEATURE_MAPS = _names.FEATURE_MAPS
if set(FEATURE_MAPS) != set(DETERMINISTIC) | {"favor+"}:
    raise ImportError(f"itnet_ext.lowrank.feature_maps: the kernels' feature maps {FEATURE_MAPS} "
                      f"and the oracle's {DETERMINISTIC_NAMES + ('favor+',)} differ: the compiled "
                      f"library does not match this Python package (rebuild it)")


def make_feature_map(name: str, *, dim: Optional[int] = None,
                     num_features: Optional[int] = None, **kwargs) -> Callable:
    """The feature map registered as ``name`` (one of :data:`FEATURE_MAPS`).

    "favor+" builds a new :class:`PositiveRandomFeatures` (``dim`` and ``num_features``
    required, further keyword arguments passed on); the others are the plain functions and
    take no arguments.
    """
    if name == "favor+":
        if dim is None or num_features is None:
            raise ValueError("feature_map: 'favor+' needs dim and num_features")
        return PositiveRandomFeatures(dim, num_features, **kwargs)
    if not isinstance(name, str) or name not in DETERMINISTIC:
        raise ValueError(f"feature_map: expected one of {FEATURE_MAPS}, got {name!r}")
    if dim is not None or num_features is not None or kwargs:
        raise ValueError(f"feature_map: {name!r} takes no arguments")
    return DETERMINISTIC[name]
