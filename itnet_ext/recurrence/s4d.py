"""S4D: a diagonal state space model with zero-order hold, evaluated by the decay scan.

Per channel d and mode n (continuous time, step dt_d = exp(log_dt_d)):

    Abar = exp(dt A),   Bbar = (exp(dt A) - 1) / A * B            (zero-order hold)
    h_t = Abar h_{t-1} + Bbar x_t
    y_t = sum_n C_n h_{t,n} + D x_t                 (mode "real":    A, B, C real)
    y_t = 2 Re(sum_n C_n h_{t,n}) + D x_t           (mode "complex": A, B, C, h complex; each
                                                     mode stands for a conjugate pair)

Only the SSM core (no output activation or projection): the S4D layer of Gu et al. 2022,
"On the Parameterization and Initialization of Diagonal State Space Models".
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..scan import functional as _F
from ._checks import check_input, check_state

__all__ = ["S4D"]

_TWO_PI = 2.0 * math.pi


class S4D(nn.Module):
    r"""Diagonal state space layer (S4D) with zero-order-hold discretization.

    Args:
        d_model: channels ``D`` (each an independent SSM).
        d_state: modes ``N`` per channel (complex modes in ``"complex"`` mode: the real
            state per channel is then ``2 N`` numbers).
        mode: ``"real"`` (S4D-Real init, ``A_n = -(n + 1)``) or ``"complex"`` (S4D-Lin init,
            ``A_n = -1/2 + i pi n``).
        dt_min, dt_max: ``dt`` initialized log-uniform in ``[dt_min, dt_max]`` per channel.
        skip: learn the feed-through ``D x_t``.

    Parameters: ``log_dt`` (D,); ``log_A_real`` (D, N) with ``Re A = -exp(log_A_real)``;
    ``A_imag`` (D, N) (complex only); ``B``, ``C``: (D, N) real, or (D, N, 2) real pairs
    (``view_as_complex``) in complex mode; ``D`` (D,) when ``skip``.

    Evaluation by :func:`itnet_ext.functional.decay_scan` with one channel group per channel
    (G = D):

    * real: log-decay ``dt A`` (D, N), ``phi = C``, ``psi = Bbar``.
    * complex: each mode becomes two real state components with the same decay
      ``rho = exp(dt Re A)``. With ``theta = dt Im A`` and ``k = t + 1`` the state is the
      complex state counter-rotated to the start of the call, ``g_t = exp(-i theta k) h_t``:

          g_t = rho g_{t-1} + Bbar exp(-i theta k) x_t,   y_t = 2 Re(C exp(i theta k) g_t)

      so ``psi_t = [Re, Im](Bbar e^{-i theta k})`` and
      ``phi_t = [2 Re, -2 Im](C e^{i theta k})`` (Rk = 2N). The phases ``theta k`` are
      formed in float64 and reduced mod 2 pi before the cast: in float32, ``theta k`` at
      ``k ~ 1e4`` would be off by ~1e-2 rad. ``g_{-1} = h_{-1}``, so an initial state enters
      unrotated and the final state is rotated back by ``theta T``.

    Memory: phi and psi vary with time and channel (the op has no time-invariant form for
    them), so each is a ``(T, D, Rk)`` tensor (``Rk = N`` real, ``2 N`` complex) expanded
    over the batch, which the op may materialize as ``(batch, T, D, Rk)``: ``2 B T D Rk``
    numbers, ``4 B T D N`` in complex mode.

    Shapes: ``forward(x (B, T, D), initial_state=None, return_state=False)`` gives ``y``
    (B, T, D), or ``(y, state)`` with ``state`` (B, D, N), complex in complex mode (the ZOH
    state ``h_{T-1}``). ``step(x_t (B, D), state=None)`` gives ``(y_t (B, D), new_state)``.
    """

    def __init__(self, d_model: int, d_state: int = 64, mode: str = "real",
                 dt_min: float = 1e-3, dt_max: float = 1e-1, skip: bool = True):
        super().__init__()
        if mode not in ("real", "complex"):
            raise ValueError(f"mode must be 'real' or 'complex', got {mode!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.d_model, self.d_state, self.mode = d_model, d_state, mode
        self.dt_min, self.dt_max = dt_min, dt_max
        D, N = d_model, d_state

        log_dt = torch.rand(D) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        n = torch.arange(N, dtype=torch.float32)
        if mode == "real":
            self.log_A_real = nn.Parameter(torch.log(n + 1).repeat(D, 1))      # A = -(n + 1)
            self.B = nn.Parameter(torch.ones(D, N))
            self.C = nn.Parameter(torch.randn(D, N))
        else:
            self.log_A_real = nn.Parameter(torch.full((D, N), math.log(0.5)))  # Re A = -1/2
            self.A_imag = nn.Parameter(math.pi * n.repeat(D, 1))               # Im A = pi n
            self.B = nn.Parameter(torch.stack([torch.ones(D, N), torch.zeros(D, N)], -1))
            self.C = nn.Parameter(torch.randn(D, N, 2) * math.sqrt(0.5))      # unit variance
        if skip:
            self.D = nn.Parameter(torch.randn(D))
        else:
            self.register_parameter("D", None)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, mode={self.mode!r}, "
                f"dt_min={self.dt_min}, dt_max={self.dt_max}, skip={self.D is not None}")

    # ------------------------------------------------------------------------------------
    # discretization and the scan factors
    # ------------------------------------------------------------------------------------
    def _scan_factors(self, T: int):
        """(log_decay (D, Rk), phi (T, D, Rk), psi (T, D, Rk)) for steps k = 1..T of a call."""
        dt = torch.exp(self.log_dt)[:, None]                          # (D, 1)
        A_re = -torch.exp(self.log_A_real)
        if self.mode == "real":
            dtA = dt * A_re
            Bbar = torch.expm1(dtA) / A_re * self.B                   # expm1: dt A is tiny
            return dtA, self.C.expand(T, -1, -1), Bbar.expand(T, -1, -1)

        A = torch.complex(A_re, self.A_imag)
        Bbar = torch.expm1(dt * A) / A * torch.view_as_complex(self.B)
        C = torch.view_as_complex(self.C)
        cos, sin = self._rotation(torch.arange(1, T + 1, device=dt.device))    # (T, D, N)
        # Bbar e^{-i theta k} and C e^{i theta k}, written out in real arithmetic
        psi = torch.cat([Bbar.real * cos + Bbar.imag * sin,
                         Bbar.imag * cos - Bbar.real * sin], -1)
        phi = 2 * torch.cat([C.real * cos - C.imag * sin,
                             -(C.imag * cos + C.real * sin)], -1)
        ld = (dt * A_re).repeat(1, 2)                                  # same decay for both
        return ld, phi, psi

    def _rotation(self, k: Tensor):
        """cos, sin of theta * k, (len(k), D, N) in the parameter dtype (phases in float64)."""
        theta = torch.exp(self.log_dt.double())[:, None] * self.A_imag.double()
        phase = torch.remainder(k.double()[:, None, None] * theta, _TWO_PI)
        dtype = self.log_dt.dtype
        return torch.cos(phase).to(dtype), torch.sin(phase).to(dtype)

    # ------------------------------------------------------------------------------------
    # public state (B, D, N), complex in complex mode  <->  the scan's state (B, D, Rk)
    # ------------------------------------------------------------------------------------
    def _state_in(self, h: Tensor) -> Tensor:
        if self.mode == "real":
            return h
        return torch.cat([h.real, h.imag], -1)

    def _state_out(self, g: Tensor, T: int) -> Tensor:
        if self.mode == "real":
            return g
        N = self.d_state
        g_re, g_im = g[..., :N], g[..., N:]
        cos, sin = self._rotation(torch.tensor([T], device=g.device))    # h = e^{i theta T} g
        return torch.complex(cos[0] * g_re - sin[0] * g_im, sin[0] * g_re + cos[0] * g_im)

    def _zero_state(self, batch: int, like: Tensor) -> Tensor:
        h = like.new_zeros(batch, self.d_model, self.d_state)
        return h if self.mode == "real" else torch.complex(h, h)

    def _check_state(self, name: str, state, batch: int) -> None:
        check_state(name, state, (batch, self.d_model, self.d_state), self.log_dt,
                    complex_ok=self.mode != "real")

    # ------------------------------------------------------------------------------------
    def forward(self, x: Tensor, initial_state: Tensor | None = None,
                return_state: bool = False):
        """x (B, T, D) -> y (B, T, D), or (y, state (B, D, N)) with ``return_state``."""
        check_input("x", x, self.d_model, self.log_dt)
        Bsz, T = x.shape[0], x.shape[1]
        if initial_state is not None:
            self._check_state("initial_state", initial_state, Bsz)
        ld, phi, psi = self._scan_factors(T)
        out = _F.decay_scan(
            x, ld, phi.expand(Bsz, -1, -1, -1), psi.expand(Bsz, -1, -1, -1), skip=self.D,
            initial_state=None if initial_state is None else self._state_in(initial_state),
            return_final_state=return_state)
        if not return_state:
            return out
        y, g = out
        return y, self._state_out(g, T)

    def step(self, x_t: Tensor, state: Tensor | None = None):
        """One token: x_t (B, D), state (B, D, N) (zeros if None) -> (y_t (B, D), new state).

        A step is a forward of length 1 from ``state``: the factors at k = 1.
        """
        check_input("x_t", x_t, self.d_model, self.log_dt, step=True)
        Bsz = x_t.shape[0]
        if state is not None:
            self._check_state("state", state, Bsz)
        if state is None:
            state = self._zero_state(Bsz, x_t)
        ld, phi, psi = self._scan_factors(1)
        y, g = _F.decay_scan_step(x_t, ld, phi[0].expand(Bsz, -1, -1),
                                  psi[0].expand(Bsz, -1, -1), self._state_in(state),
                                  skip=self.D)
        return y, self._state_out(g, 1)
