"""The decay scan, fused (docs/design.md section 2, lowrank causal with a decay): the public
entry of ``itnet::decay_scan_fwd`` / ``decay_scan_bwd``, and one step for generation."""
import torch

from .._common.checks import data_check
from . import op  # noqa: F401  (registers the fake kernel and autograd of itnet::decay_scan_*)
from .validate import check_scan_inputs

__all__ = ["decay_scan", "decay_scan_step"]


def _unstable(p):
    """A bool tensor: some decay factor exp(a) is above 1 (a > 0); None when there is no decay
    value to check."""
    if p.form == "factored":
        if not p.dt.numel():
            return None
        # a = dt * A <= 0 for every (t, d, r) iff, per channel d, dt > 0 somewhere implies
        # A[d] <= 0 and dt < 0 somewhere implies A[d] >= 0
        flat = p.dt.reshape(-1, p.D)
        return ((flat.amax(0) > 0) & (p.A.amax(1) > 0)) | ((flat.amin(0) < 0) & (p.A.amin(1) < 0))
    return (p.log_decay > 0) if p.log_decay.numel() else None


def _check_stable(p):
    """stable=True: every decay factor exp(a) must be <= 1 (a <= 0). Eager: a ValueError naming
    the channel or the maximum. Under torch.compile (no host sync in the graph): the same
    condition as an asynchronous assert, a RuntimeError on CPU and a device-side assert on CUDA."""
    bad = _unstable(p)
    if bad is None:
        return
    what = "log_decay (dt, A)" if p.form == "factored" else "log_decay"
    if torch.compiler.is_compiling():  # (eager: the message below names the channel or max)
        data_check(bad, f"{what}: stable=True needs every log-decay <= 0 (a decay factor above 1)")
        return
    if not bool(bad.any()):
        return
    if p.form == "factored":
        d = int(bad.nonzero()[0, 0])
        raise ValueError(f"log_decay (dt, A): stable=True needs dt * A <= 0, but channel {d} "
                         "has a positive log-decay (a decay factor above 1)")
    raise ValueError(f"log_decay: stable=True needs log_decay <= 0, got a maximum of "
                     f"{float(p.log_decay.max()):.4g} (a decay factor above 1)")


def decay_scan(x, log_decay, phi, psi, *, skip=None, initial_state=None,
               return_final_state=False, stable=False):
    r"""Causal low-rank kernel with a decay, evaluated in O(T) by a fused scan (docs/design.md section 2).

    Per channel d and state r (channel d reads group g(d) = d // (D / G) of phi / psi)::

        h_{t,d,r} = exp(a_{t,d,r}) h_{t-1,d,r} + psi_{t,g(d),r} x_{t,d}
        y_{t,d}   = sum_r phi_{t,g(d),r} h_{t,d,r} + skip_d x_{t,d}

    i.e. y_t = sum_{s <= t} kappa(t, s) x_s with kappa(t, s) = sum_r phi_{t,r} psi_{s,r}
    exp(L_{t,r} - L_{s,r}), L the running sum of the log-decays a.

    Args:
        x: (B, T, D).
        log_decay: the log-decay a, one of
            - a tensor broadcastable to (B, T, D, Rk) with D given, e.g. (B, T, D, Rk),
              (B, T, D, 1) (one decay per channel) or (1, 1, D, Rk);
            - a (D, Rk) tensor (time-invariant);
            - the pair (dt, A), dt (B, T, D) and A (D, Rk): a = dt * A (Mamba's form), never
              materialized.
        phi, psi: (B, T, Rk) or (B, T, G, Rk) (G channel groups, G divides D).
        skip: (D,) direct term.
        initial_state: (B, D, Rk) state before the first step (default 0).
        return_final_state: also return the state after the last step (B, D, Rk).
        stable: check that every decay factor is <= 1 (log_decay <= 0) and raise if not (under
            torch.compile as an asynchronous assert: RuntimeError on CPU, a device assert on CUDA).

    Returns:
        y (B, T, D) in x's dtype, or (y, final_state).

    Kernels: CPU float32 / float64, parallel over (batch, group, channel block) and
    vectorized over the state; CUDA float32 / float64 / float16 / bfloat16 (float32 state):
    a chunked block scan (cub::BlockScan) per (batch, channel). Both backwards recompute the
    states chunk by chunk from checkpoints (on CPU the forward saves the state every 64 steps
    when a backward will run, 1/64 of the states): no (B, T, D, Rk) tensor is stored. The
    CPU backward is
    deterministic; the CUDA one adds dphi / dpsi over the channels of a group with atomics
    (in deterministic mode: per-channel partial sums up to 1 GiB, else PyTorch's
    nondeterminism error).
    """
    p = check_scan_inputs(x, log_decay, phi, psi, skip, initial_state)
    if stable:
        _check_stable(p)
    ld = p.log_decay
    if p.form == "static":
        ld = ld.reshape(1, 1, p.D, p.Rk)
    # the CPU forward saves the state every 64 steps for the backward when one will run
    tensors = (x, ld, p.dt, p.A, p.phi, p.psi, skip, initial_state)
    checkpoint = (x.device.type == "cpu" and torch.is_grad_enabled()
                  and any(t is not None and t.requires_grad for t in tensors))
    y, h_last, _ = torch.ops.itnet.decay_scan_fwd(*tensors, checkpoint)
    return (y, h_last) if return_final_state else y


def decay_scan_step(x_t, log_decay_t, phi_t, psi_t, state, *, skip=None):
    r"""One step of :func:`decay_scan`, for token-by-token generation.

    Args:
        x_t: (B, D), the input at this step.
        log_decay_t: broadcastable to (B, D, Rk) (3-D, D given), a (D, Rk) tensor, or the
            pair (dt_t (B, D), A (D, Rk)).
        phi_t, psi_t: (B, Rk) or (B, G, Rk).
        state: (B, D, Rk), the state after the previous step.
        skip: (D,).

    Returns:
        (y_t (B, D), new_state (B, D, Rk)); decay_scan over T steps equals T calls of this
        function threading the state (float32 arithmetic for 16-bit inputs).
    """
    if not isinstance(x_t, torch.Tensor) or x_t.dim() != 2:
        raise ValueError("x_t: expected a (B, D) tensor, got "
                         f"{tuple(x_t.shape) if isinstance(x_t, torch.Tensor) else type(x_t)}")
    if isinstance(log_decay_t, (tuple, list)):
        if len(log_decay_t) != 2 or not isinstance(log_decay_t[0], torch.Tensor):
            raise ValueError("log_decay_t: expected a tensor or the pair (dt_t, A)")
        ld = (log_decay_t[0].unsqueeze(1), log_decay_t[1])
    elif isinstance(log_decay_t, torch.Tensor) and log_decay_t.dim() == 3:
        ld = log_decay_t.unsqueeze(1)
    elif isinstance(log_decay_t, torch.Tensor) and log_decay_t.dim() == 2:
        ld = log_decay_t
    else:
        raise ValueError("log_decay_t: expected a tensor broadcastable to (B, D, Rk), a (D, Rk) "
                         "tensor or the pair (dt_t (B, D), A (D, Rk))")
    for name, t in (("phi_t", phi_t), ("psi_t", psi_t)):
        if not isinstance(t, torch.Tensor) or t.dim() not in (2, 3):
            raise ValueError(f"{name}: expected a (B, Rk) or (B, G, Rk) tensor")
    if state is None:
        raise ValueError("state: expected the (B, D, Rk) state after the previous step (zeros "
                         "before the first step), got None")
    p = check_scan_inputs(x_t.unsqueeze(1), ld, phi_t.unsqueeze(1), psi_t.unsqueeze(1), skip,
                          state, state_name="state")
    cd = torch.promote_types(x_t.dtype, torch.float32)
    grp = p.D // p.G
    phi = p.phi[:, 0].to(cd).repeat_interleave(grp, dim=1)    # (B, D, Rk)
    psi = p.psi[:, 0].to(cd).repeat_interleave(grp, dim=1)
    xc = x_t.to(cd)
    new = torch.exp(p.decay_at(0).to(cd)) * state.to(cd) + psi * xc[..., None]
    y = (phi * new).sum(-1)
    if skip is not None:
        y = y + skip.to(cd) * xc
    return y.to(x_t.dtype), new.to(state.dtype)
