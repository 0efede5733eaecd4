"""Mamba-1's mixer block (Gu & Dao 2023), its selective scan evaluated by the decay scan.

    x, z   = in_proj(u)                                    (B, T, d_inner) each
    x      = silu(causal depthwise conv1d(x))
    dt, B, C = x_proj(x)                                   (dt_rank, d_state, d_state)
    dt     = softplus(dt_proj(dt))                         dt_proj's bias is the delta bias
    h_t    = exp(dt_t A) h_{t-1} + dt_t B_t x_t,  A = -exp(A_log)   (per channel, d_state)
    y_t    = C_t . h_t + D x_t
    out    = out_proj(y * silu(z))

Parameter names and shapes follow ``mamba_ssm.modules.mamba_simple.Mamba``, so its state
dicts load as they are.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as TF

from ..scan import functional as _F
from ._checks import check_input, check_state

__all__ = ["MambaMixer"]


class MambaMixer(nn.Module):
    r"""Mamba-1 mixer: gated selective state space block.

    Args: as ``mamba_ssm``'s ``Mamba``: ``d_model``, ``d_state`` (N), ``d_conv`` (causal conv
    width), ``expand`` (``d_inner = expand * d_model``), ``dt_rank`` (``"auto"`` =
    ``ceil(d_model / 16)``), ``dt_min`` / ``dt_max`` / ``dt_init_floor`` (the delta-bias init),
    ``conv_bias``, ``bias`` (of in_proj / out_proj).

    The selective scan is :func:`itnet_ext.functional.decay_scan` with the factored log-decay
    ``(dt, A)`` (``dt * A`` is never materialized), scan input ``dt * x`` (so ``psi = B``),
    ``phi = C`` and one channel group. The op's ``skip`` would multiply the scan input
    ``dt * x``, whereas Mamba's ``D`` multiplies ``x``: the skip is added here instead.

    ``forward(u (B, T, d_model), initial_state=None, return_state=False)`` gives
    ``out`` (B, T, d_model), or ``(out, state)``; ``state = (conv_state, ssm_state)`` with
    ``conv_state`` (B, d_inner, d_conv) the last ``d_conv`` conv inputs (zero-padded, as
    mamba_ssm's inference cache) and ``ssm_state`` (B, d_inner, d_state).
    ``step(u_t (B, d_model), state=None)`` gives ``(out_t (B, d_model), new_state)``.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank="auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        d_inner = self.d_inner

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        # an nn.Conv1d for mamba_ssm's parameter layout; forward applies its weight to the
        # state's left context (zeros at the start) rather than through its own padding
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner,
                                padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

        # Mamba's dt init: weights keep the variance of dt at the rank's scale; the bias is
        # the inverse softplus of dt ~ log-uniform in [dt_min, dt_max], so that
        # softplus(bias) starts in that range.
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True      # the flags mamba_ssm's training code reads

        # S4D-Real init A_n = -(n + 1), the same for every channel
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(d_inner))
        self.D._no_weight_decay = True

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, "
                f"d_conv={self.d_conv}, dt_rank={self.dt_rank}")

    # ------------------------------------------------------------------------------------
    # the pieces shared by forward and step
    # ------------------------------------------------------------------------------------
    def _selective_params(self, x: Tensor):
        """x (..., d_inner) after the conv -> dt (..., d_inner), A (d_inner, N), B, C (..., N)."""
        dt, Bm, Cm = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = TF.softplus(self.dt_proj(dt))
        return dt, -torch.exp(self.A_log), Bm, Cm

    def _output(self, y: Tensor, x: Tensor, z: Tensor) -> Tensor:
        """Skip on the un-scaled scan input, gate, project out."""
        return self.out_proj((y + x * self.D) * TF.silu(z))

    def _check_state(self, state, batch: int, name: str) -> None:
        """None, or the pair (conv_state (B, d_inner, d_conv), ssm_state (B, d_inner, d_state))."""
        if state is None:
            return
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError(f"{name}: expected the pair (conv_state, ssm_state) or None, got "
                             f"{type(state).__name__}")
        like = self.in_proj.weight
        check_state(f"{name}[0] (conv_state)", state[0], (batch, self.d_inner, self.d_conv), like)
        check_state(f"{name}[1] (ssm_state)", state[1], (batch, self.d_inner, self.d_state), like)

    def _zero_state(self, batch: int, like: Tensor):
        return (like.new_zeros(batch, self.d_inner, self.d_conv),
                like.new_zeros(batch, self.d_inner, self.d_state))

    # ------------------------------------------------------------------------------------
    def forward(self, u: Tensor, initial_state=None, return_state: bool = False):
        """u (B, T, d_model) -> out (B, T, d_model), or (out, (conv_state, ssm_state))."""
        check_input("u", u, self.d_model, self.in_proj.weight)
        Bsz = u.shape[0]
        self._check_state(initial_state, Bsz, "initial_state")
        x, z = self.in_proj(u).chunk(2, dim=-1)
        if u.shape[1] == 0:     # nothing to mix; the state passes through unchanged
            state = initial_state if initial_state is not None else self._zero_state(Bsz, x)
            out = self.out_proj(z)
            return (out, state) if return_state else out
        if initial_state is None:
            conv_state, ssm_state = x.new_zeros(Bsz, self.d_inner, self.d_conv), None
        else:
            conv_state, ssm_state = initial_state

        # causal depthwise conv; its left context is the previous inputs (zeros at the start).
        # conv_state's oldest column is not part of the window (as in mamba_ssm's cache).
        xs = torch.cat([conv_state, x.transpose(1, 2)], dim=-1)       # (B, d_inner, d_conv + T)
        xc = TF.conv1d(xs[..., 1:], self.conv1d.weight, self.conv1d.bias, groups=self.d_inner)
        xc = TF.silu(xc).transpose(1, 2)                                # (B, T, d_inner)

        dt, A, Bm, Cm = self._selective_params(xc)
        out = _F.decay_scan(dt * xc, (dt, A), Cm, Bm, initial_state=ssm_state,
                            return_final_state=return_state)
        if not return_state:
            return self._output(out, xc, z)
        y, ssm_state = out
        return self._output(y, xc, z), (xs[..., -self.d_conv:], ssm_state)

    def step(self, u_t: Tensor, state=None):
        """One token: u_t (B, d_model), state (conv_state, ssm_state) (zeros if None)
        -> (out_t (B, d_model), new state)."""
        check_input("u_t", u_t, self.d_model, self.in_proj.weight, step=True)
        self._check_state(state, u_t.shape[0], "state")
        x, z = self.in_proj(u_t).chunk(2, dim=-1)
        conv_state, ssm_state = self._zero_state(u_t.shape[0], x) if state is None else state
        conv_state = torch.cat([conv_state[..., 1:], x[..., None]], dim=-1)
        xc = (conv_state * self.conv1d.weight[:, 0]).sum(-1)
        if self.conv1d.bias is not None:
            xc = xc + self.conv1d.bias
        xc = TF.silu(xc)

        dt, A, Bm, Cm = self._selective_params(xc)
        y, ssm_state = _F.decay_scan_step(dt * xc, (dt, A), Cm, Bm, ssm_state)
        return self._output(y, xc, z), (conv_state, ssm_state)
