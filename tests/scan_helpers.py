"""Random decay-scan problems shared by the scan tests (reference, CPU op, CUDA op)."""
import torch

F64 = torch.float64
# log-decay forms: (B, T, D, Rk), (B, T, D, 1), (D, Rk), (dt, A), (1, 1, D, Rk), (1, T, D, Rk),
# (B, 1, D, 1)
FORMS = ("full", "channel", "static", "factored", "bcast_batch_time", "bcast_batch",
         "channel_static")


def scan_problem(seed, form, *, B=2, T=23, D=6, Rk=4, G=1, grouped=False, skip=True,
                 h0=True, dtype=F64):
    """Random scan arguments; log-decays in [-0.6, 0] so that the dense form's exp(+-L)
    stays well inside float64's range."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*s):
        return torch.randn(*s, generator=g, dtype=F64).to(dtype)

    def neg(*s):
        return (-0.6 * torch.rand(*s, generator=g, dtype=F64)).to(dtype)

    x = rnd(B, T, D)
    shape = (B, T, G, Rk) if grouped or G > 1 else (B, T, Rk)
    phi, psi = rnd(*shape), rnd(*shape)
    if form == "full":
        ld = neg(B, T, D, Rk)
    elif form == "channel":
        ld = neg(B, T, D, 1)
    elif form == "static":
        ld = neg(D, Rk)
    elif form == "bcast_batch_time":
        ld = neg(1, 1, D, Rk)
    elif form == "bcast_batch":
        ld = neg(1, T, D, Rk)
    elif form == "channel_static":
        ld = neg(B, 1, D, 1)
    else:  # factored: dt > 0 (softplus-like), A < 0
        ld = (torch.rand(B, T, D, generator=g, dtype=F64).to(dtype) * 0.5,
              -torch.rand(D, Rk, generator=g, dtype=F64).to(dtype))
    kw = dict(skip=rnd(D) if skip else None, initial_state=rnd(B, D, Rk) if h0 else None)
    return (x, ld, phi, psi), kw


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()
