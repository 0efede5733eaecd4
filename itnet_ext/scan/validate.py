"""Argument checks and normalization of the decay scan (docs/design.md section 2, lowrank causal).

    h_{t,d,r} = exp(a_{t,d,r}) h_{t-1,d,r} + psi_{t,g(d),r} x_{t,d}
    y_{t,d}   = sum_r phi_{t,g(d),r} h_{t,d,r} + skip_d x_{t,d}

x (B, T, D); a = log_decay in one of the forms
    (B or 1, T or 1, D, Rk or 1)   a tensor broadcasting to (B, T, D, Rk)
    (D, Rk)                        time-invariant
    (dt, A)                        dt (B, T, D), A (D, Rk): a = dt * A, never materialized
phi, psi (B, T, Rk) or (B, T, G, Rk): G channel groups, channel d in group d // (D / G);
skip (D,); initial_state (B, D, Rk).

Shared by the reference (itnet_ext.reference.decay_scan) and, later, the fused op.
Bad input raises ValueError naming the argument and what was expected.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .._common.checks import _shape


@dataclass
class ScanProblem:
    B: int
    T: int
    D: int
    Rk: int
    G: int                      # channel groups of phi / psi
    dtype: torch.dtype
    device: torch.device
    form: str                   # "tensor" | "static" | "factored"
    log_decay: Optional[torch.Tensor]  # 4-D broadcastable ("tensor"), (D, Rk) ("static")
    dt: Optional[torch.Tensor]  # (B, T, D) ("factored")
    A: Optional[torch.Tensor]   # (D, Rk) ("factored")
    phi: torch.Tensor           # (B, T, G, Rk)
    psi: torch.Tensor           # (B, T, G, Rk)

    def decay_at(self, t: int) -> torch.Tensor:
        """log-decay of step t, broadcastable to (B, D, Rk)."""
        if self.form == "factored":
            return self.dt[:, t, :, None] * self.A
        if self.form == "static":
            return self.log_decay
        a = self.log_decay
        return a[:, t if a.shape[1] > 1 else 0]

    def full_decay(self) -> torch.Tensor:
        """(B, T, D, Rk) log-decays (materialized: for references on small problems)."""
        if self.form == "factored":
            return self.dt[..., None] * self.A
        a = self.log_decay if self.form == "tensor" else self.log_decay[None, None]
        return a.expand(self.B, self.T, self.D, self.Rk)


def _tensor(name, x, layout):
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor {layout}, got {type(x).__name__}")


def check_scan_inputs(x, log_decay, phi, psi, skip=None, initial_state=None,
                      state_name="initial_state") -> ScanProblem:
    _tensor("x", x, "(B, T, D)")
    if x.dim() != 3:
        raise ValueError(f"x: expected shape (B, T, D), got {_shape(x)}")
    if not x.is_floating_point():
        raise ValueError(f"x: expected a floating-point tensor, got dtype {x.dtype}")
    B, T, D = x.shape
    dtype, device = x.dtype, x.device

    def same(name, t):
        if t.dtype != dtype:
            raise ValueError(f"{name}: expected dtype {dtype} (the dtype of x), got {t.dtype}")
        if t.device != device:
            raise ValueError(f"{name}: expected a tensor on {device} (the device of x), "
                             f"got {t.device}")

    # phi / psi: (B, T, Rk) or (B, T, G, Rk), the same shape
    for name, t in (("phi", phi), ("psi", psi)):
        _tensor(name, t, "(B, T, Rk) or (B, T, G, Rk)")
        same(name, t)
        if t.dim() not in (3, 4) or tuple(t.shape[:2]) != (B, T):
            raise ValueError(f"{name}: expected shape ({B}, {T}, Rk) or ({B}, {T}, G, Rk) "
                             f"(B, T of x), got {_shape(t)}")
    if phi.shape != psi.shape:
        raise ValueError(f"phi, psi: expected the same shape, got {_shape(phi)} and {_shape(psi)}")
    phi4 = phi if phi.dim() == 4 else phi[:, :, None]
    psi4 = psi if psi.dim() == 4 else psi[:, :, None]
    G, Rk = phi4.shape[2], phi4.shape[3]
    if G < 1 or D % G != 0:
        raise ValueError(f"phi, psi: the group count G = {G} must divide D = {D} (channel d "
                         f"uses group d // (D / G))")

    # log-decay forms
    ld = dt = A = None
    if isinstance(log_decay, (tuple, list)):
        if len(log_decay) != 2:
            raise ValueError("log_decay: expected a tensor or the pair (dt, A), got a sequence "
                             f"of length {len(log_decay)}")
        dt, A = log_decay
        _tensor("log_decay dt", dt, f"({B}, {T}, {D})")
        _tensor("log_decay A", A, f"({D}, {Rk})")
        same("log_decay dt", dt)
        same("log_decay A", A)
        if tuple(dt.shape) != (B, T, D):
            raise ValueError(f"log_decay dt: expected shape ({B}, {T}, {D}), got {_shape(dt)}")
        if tuple(A.shape) != (D, Rk):
            raise ValueError(f"log_decay A: expected shape ({D}, {Rk}), got {_shape(A)}")
        form = "factored"
    else:
        _tensor("log_decay", log_decay, f"broadcastable to ({B}, {T}, {D}, {Rk}), or ({D}, {Rk}), "
                "or the pair (dt, A)")
        same("log_decay", log_decay)
        ld = log_decay
        if ld.dim() == 2:
            if tuple(ld.shape) != (D, Rk):
                raise ValueError(f"log_decay: a 2-D log-decay is time-invariant, expected shape "
                                 f"({D}, {Rk}), got {_shape(ld)}")
            form = "static"
        elif ld.dim() == 4:
            ok = all(s in (1, full) for s, full in zip(ld.shape, (B, T, D, Rk))) and \
                ld.shape[2] == D
            if not ok:
                raise ValueError(f"log_decay: expected a shape broadcastable to ({B}, {T}, {D}, "
                                 f"{Rk}) with D = {D} given, e.g. ({B}, {T}, {D}, {Rk}) or "
                                 f"({B}, {T}, {D}, 1), got {_shape(ld)}")
            form = "tensor"
        else:
            raise ValueError(f"log_decay: expected 4 dims (broadcastable to ({B}, {T}, {D}, "
                             f"{Rk})), 2 dims ({D}, {Rk}) or the pair (dt, A), got {_shape(ld)}")

    if skip is not None:
        _tensor("skip", skip, f"({D},)")
        same("skip", skip)
        if tuple(skip.shape) != (D,):
            raise ValueError(f"skip: expected shape ({D},), got {_shape(skip)}")
    if initial_state is not None:
        # (state_name: the caller's name for it, "state" in decay_scan_step)
        _tensor(state_name, initial_state, f"({B}, {D}, {Rk})")
        same(state_name, initial_state)
        if tuple(initial_state.shape) != (B, D, Rk):
            raise ValueError(f"{state_name}: expected shape ({B}, {D}, {Rk}), got "
                             f"{_shape(initial_state)}")

    return ScanProblem(B=B, T=T, D=D, Rk=Rk, G=G, dtype=dtype, device=device, form=form,
                       log_decay=ld, dt=dt, A=A, phi=phi4, psi=psi4)
