"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"), evaluated by the decay scan.

    minGRU:   z_t = sigmoid(W_z x_t),  htilde_t = W_h x_t
              h_t = (1 - z_t) h_{t-1} + z_t htilde_t
    minLSTM:  f_t = sigmoid(W_f x_t),  i_t = sigmoid(W_i x_t),  htilde_t = W_h x_t
              f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t)
              h_t = f'_t h_{t-1} + i'_t htilde_t

Both are h_t = a_t h_{t-1} + b_t, a per-channel decay scan with Rk = 1 and phi = psi = 1.
The log-decay log a_t is formed from the gate logits directly (log(1 - sigmoid(k)) =
logsigmoid(-k); log f' = logsigmoid(k_f) - logaddexp(logsigmoid(k_f), logsigmoid(k_i))):
finite, with finite gradients, for saturated gates where 1 - z rounds to 0.
"""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as TF

from ..scan import functional as _F
from ._checks import check_input, check_state

__all__ = ["MinGRU", "MinLSTM"]


class _MinRNN(nn.Module):
    """The scan shared by minGRU and minLSTM. A subclass defines ``_coefficients(x)``:
    x (..., d_in) -> (log a, b), each (..., d_hidden), for h_t = a_t h_{t-1} + b_t."""

    def __init__(self, d_in: int, d_hidden: int):
        super().__init__()
        self.d_in, self.d_hidden = d_in, d_hidden

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_hidden={self.d_hidden}"

    def forward(self, x: Tensor, h0: Tensor | None = None, return_state: bool = False):
        """x (B, T, d_in) -> hidden states (B, T, d_hidden), or (states, h_T (B, d_hidden))
        with ``return_state``; ``h0`` (B, d_hidden) is the state before x_0 (default 0)."""
        like = next(self.parameters())
        check_input("x", x, self.d_in, like, what="d_in")
        Bsz, T = x.shape[0], x.shape[1]
        if h0 is not None:
            check_state("h0", h0, (Bsz, self.d_hidden), like)
        log_a, b = self._coefficients(x)
        ones = b.new_ones(1, 1, 1).expand(Bsz, T, 1)                     # phi = psi = 1
        out = _F.decay_scan(b, log_a[..., None], ones, ones,
                            initial_state=None if h0 is None else h0[..., None],
                            return_final_state=return_state)
        if not return_state:
            return out
        h, hT = out
        return h, hT[..., 0]

    def step(self, x_t: Tensor, h: Tensor | None = None):
        """One token: x_t (B, d_in), h (B, d_hidden) (zeros if None) -> (h_t, h_t): output
        and state are the same vector, paired as the (y_t, state) of the other layers."""
        like = next(self.parameters())
        check_input("x_t", x_t, self.d_in, like, step=True, what="d_in")
        if h is not None:
            check_state("h", h, (x_t.shape[0], self.d_hidden), like)
        log_a, b = self._coefficients(x_t)
        if h is None:
            h = b.new_zeros(b.shape)
        ones = b.new_ones(1, 1).expand(b.shape[0], 1)
        y, state = _F.decay_scan_step(b, log_a[..., None], ones, ones, h[..., None])
        return y, state[..., 0]


class MinGRU(_MinRNN):
    r"""minGRU: ``h_t = (1 - z_t) h_{t-1} + z_t htilde_t``, ``z_t = sigmoid(linear_z(x_t))``,
    ``htilde_t = linear_h(x_t)`` (``nn.Linear`` each, with bias).

    ``forward(x (B, T, d_in), h0=None, return_state=False)``, ``step(x_t, h=None)``.
    """

    def __init__(self, d_in: int, d_hidden: int):
        super().__init__(d_in, d_hidden)
        self.linear_z = nn.Linear(d_in, d_hidden)
        self.linear_h = nn.Linear(d_in, d_hidden)

    def _coefficients(self, x):
        k = self.linear_z(x)
        return TF.logsigmoid(-k), TF.sigmoid(k) * self.linear_h(x)     # log(1 - z), z htilde


class MinLSTM(_MinRNN):
    r"""minLSTM: ``h_t = f'_t h_{t-1} + i'_t htilde_t`` with the normalized gates
    ``f' = f / (f + i)``, ``i' = i / (f + i)``, ``f = sigmoid(linear_f(x_t))``,
    ``i = sigmoid(linear_i(x_t))``, ``htilde_t = linear_h(x_t)``.

    ``forward(x (B, T, d_in), h0=None, return_state=False)``, ``step(x_t, h=None)``.
    """

    def __init__(self, d_in: int, d_hidden: int):
        super().__init__(d_in, d_hidden)
        self.linear_f = nn.Linear(d_in, d_hidden)
        self.linear_i = nn.Linear(d_in, d_hidden)
        self.linear_h = nn.Linear(d_in, d_hidden)

    def _coefficients(self, x):
        log_f = TF.logsigmoid(self.linear_f(x))
        log_i = TF.logsigmoid(self.linear_i(x))
        log_norm = log_f.logaddexp(log_i)                               # log(f + i)
        return log_f - log_norm, (log_i - log_norm).exp() * self.linear_h(x)
