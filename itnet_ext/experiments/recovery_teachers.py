"""Teachers, students and the linear baseline of the recovery experiments
(:mod:`itnet_ext.experiments.recovery`).

Every teacher and student maps batch-first sequences ``x (B, N, C)`` to ``(B, N, C)``; a 2-D
teacher's ``N = H * W`` tokens are its grid in row-major order, with (row, col) positions.

Teachers are frozen, randomly initialised torch modules (PyTorch's default initialisation,
seeded per teacher name), their outputs normalised on a calibration set (per-channel mean
removed, divided by the overall standard deviation) so that the zero predictor has a
relative error of about 1 and a constant offset cannot make a student look good.

Students are built from :class:`~itnet_ext.IntegralTransform` with a pair-MLP kernel of
width ``R = kernel_hidden`` and the settings of the teacher's family (no converter:
``from_conv*`` / ``from_multihead_attention`` are not used, every parameter is trained from
a random start); see :data:`STUDENTS`.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from ..models import ITNetBlock, OperatorConfig, ScanMixer
from ..nn import IntegralTransform
from ..recurrence import MambaMixer

__all__ = ["Teacher", "TEACHERS", "FAMILIES", "build_teacher", "STUDENTS", "build_student",
           "KernelStudent", "lstsq_fit", "lstsq_apply", "rel_err", "derived_seed"]


def derived_seed(seed: int, *names) -> int:
    """A stable 31-bit seed for (run seed, names): independent streams per purpose."""
    return zlib.crc32(repr((int(seed),) + tuple(names)).encode()) & 0x7FFFFFFF


def rel_err(pred: Tensor, target: Tensor) -> float:
    """||pred - target||_F / ||target||_F."""
    return float((pred - target).double().norm() / target.double().norm())


# --------------------------------------------------------------------------------------
# teachers
# --------------------------------------------------------------------------------------
@dataclass
class Teacher:
    name: str
    family: str                      # "conv1d", "conv2d", "mha", "causal"
    module: nn.Module
    apply: Callable[[Tensor], Tensor]     # raw teacher: (B, N, C) -> (B, N, C)
    seq_len: int
    channels: int
    pos: Tensor                      # (1, N, pos_dim) positions for the students
    description: str
    extra: dict
    mu: Optional[Tensor] = None      # normalisation (set by calibrate)
    sigma: float = 1.0

    @torch.no_grad()
    def calibrate(self, x: Tensor) -> None:
        y = self.apply(x)
        self.mu = y.mean(dim=(0, 1))
        self.sigma = float((y - self.mu).std())

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        return (self.apply(x) - self.mu) / self.sigma

    def sample(self, batch: int, generator: torch.Generator) -> Tensor:
        return torch.randn(batch, self.seq_len, self.channels, generator=generator)


def _line(n: int, scale: float = 1.0) -> Tensor:
    return (torch.arange(n, dtype=torch.float32) / scale).view(1, n, 1)


def _conv1d(C, N, quick, kernel_size=5):
    m = nn.Conv1d(C, C, kernel_size, padding=kernel_size // 2)
    return ("conv1d", m, lambda x: m(x.transpose(1, 2)).transpose(1, 2), _line(N),
            f"nn.Conv1d({C}, {C}, kernel_size={kernel_size}, padding={kernel_size // 2}), "
            f"length {N}", {"kernel_size": kernel_size})


def _conv2d(C, N, quick, kernel_size=3):
    side = 4 if quick else 8
    m = nn.Conv2d(C, C, kernel_size, padding=kernel_size // 2)

    def f(x):
        B = x.shape[0]
        img = x.view(B, side, side, C).permute(0, 3, 1, 2)
        return m(img).permute(0, 2, 3, 1).reshape(B, side * side, C)
    r, c = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    pos = torch.stack([r, c], -1).reshape(1, side * side, 2).float()
    return ("conv2d", m, f, pos, f"nn.Conv2d({C}, {C}, kernel_size={kernel_size}, padding="
            f"{kernel_size // 2}) on a {side}x{side} grid", {"kernel_size": kernel_size,
                                                              "grid": side})


def _mha(C, N, quick, heads=2):
    m = nn.MultiheadAttention(C, heads, batch_first=True)
    return ("mha", m, lambda x: m(x, x, x, need_weights=False)[0], _line(N),
            f"nn.MultiheadAttention({C}, {heads}), self attention, length {N}", {"heads": heads})


def _rnn(cls):
    def build(C, N, quick):
        m = cls(C, C, batch_first=True)
        return ("causal", m, lambda x: m(x)[0], _line(N, 8.0),
                f"nn.{cls.__name__}({C}, {C}), one layer, length {N}", {})
    return build


def _mamba(C, N, quick):
    m = MambaMixer(C)
    return ("causal", m, m, _line(N, 8.0), f"MambaMixer(d_model={C}, d_state=16, d_conv=4, "
            f"expand=2), length {N}", {})


# name -> (builder, channels, sequence length) at the default sizes
TEACHERS: Dict[str, Tuple[Callable, int, int]] = {
    "conv1d": (_conv1d, 16, 32), "conv2d": (_conv2d, 16, 64), "mha": (_mha, 16, 32),
    "gru": (_rnn(nn.GRU), 16, 32), "lstm": (_rnn(nn.LSTM), 16, 32), "mamba": (_mamba, 16, 32),
}
FAMILIES = {"conv1d": "conv1d", "conv2d": "conv2d", "mha": "mha", "gru": "causal",
            "lstm": "causal", "mamba": "causal"}
_QUICK = {"channels": 8, "seq_len": 12}


def build_teacher(name: str, seed: int, quick: bool = False, **options) -> Teacher:
    """The frozen teacher ``name`` (not yet calibrated); ``options`` go to its builder
    (``kernel_size`` for the convolutions, ``heads`` for mha)."""
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; choose from {','.join(TEACHERS)}")
    build, C, N = TEACHERS[name]
    if quick:
        C, N = _QUICK["channels"], _QUICK["seq_len"]
    if name == "conv2d":
        N = 16 if quick else 64
    torch.manual_seed(derived_seed(seed, "teacher", name))
    family, m, f, pos, desc, extra = build(C, N, quick, **options)
    m.eval().requires_grad_(False)
    return Teacher(name, family, m, f, N, C, pos, desc, extra)


# --------------------------------------------------------------------------------------
# students
# --------------------------------------------------------------------------------------
class KernelStudent(nn.Module):
    """One IntegralTransform over the teacher's tokens. Keys / values are the input
    (``kdim = vdim = C``); with ``embed_dim != C`` the queries are a learned linear lift of
    the input and a linear head maps the E outputs back to C (so a C-channel operator can
    use ``H`` heads of ``Dh = C`` channels each, e.g. one head per conv tap). ``skip``: a
    learned pointwise linear term added to the output."""

    def __init__(self, channels: int, embed_dim: int, num_heads: int, pos: Tensor,
                 skip: bool = False, **kw):
        super().__init__()
        C, E = channels, embed_dim
        self.lift = nn.Linear(C, E) if E != C else None
        self.it = IntegralTransform(E, num_heads, kdim=C, vdim=C, batch_first=True, **kw)
        self.head = nn.Linear(E, C) if E != C else None
        self.skip = nn.Linear(C, C) if skip else None
        self.register_buffer("pos", pos, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        q = x if self.lift is None else self.lift(x)
        y = self.it(q, x, x, query_pos=self.pos, key_pos=self.pos)
        y = y if self.head is None else self.head(y)
        return y if self.skip is None else y + self.skip(x)


class StackStudent(nn.Module):
    """Linear in, ``depth`` causal dense ITNetBlocks (pre-norm transform + pointwise MLP,
    residuals), LayerNorm, linear out."""

    def __init__(self, channels: int, embed_dim: int, config: OperatorConfig, pos: Tensor,
                 depth: int = 2):
        super().__init__()
        self.inp = nn.Linear(channels, embed_dim)
        self.blocks = nn.ModuleList(ITNetBlock(config, "dense", causal=True) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.out = nn.Linear(embed_dim, channels)
        self.register_buffer("pos", pos, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        for b in self.blocks:
            h = b(h, self.pos)
        return self.out(self.norm(h))


class ScanStudent(nn.Module):
    """The ScanMixer (causal decaying low-rank kernel, ``rank`` states per channel) between
    an affine lift C -> E and a linear head E -> C, plus a pointwise linear skip. The lift's
    bias gives the mixer's (bias-free) phi / psi maps a constant part: without it the
    kernel phi(x_t) . psi(x_s) is bilinear in the input, and the output (scan input v(x_s))
    has no term linear in the past inputs."""

    def __init__(self, channels: int, embed_dim: int, num_heads: int, rank: int):
        super().__init__()
        self.lift = nn.Linear(channels, embed_dim)
        self.mixer = ScanMixer(embed_dim, num_heads, rank)
        self.head = nn.Linear(embed_dim, channels)
        self.skip = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.mixer(self.lift(x))) + self.skip(x)


def _conv_student(t: Teacher, R: int):
    k = t.extra["kernel_size"]
    D = 2 if t.family == "conv2d" else 1
    taps = k ** D
    kw = dict(kernel_hidden=R, content=False, normalize="none", window=k // 2, pos_dim=D,
              offset_embedding=True, relative_positions=True, activation="gelu")
    m = KernelStudent(t.channels, taps * t.channels, taps, t.pos, **kw)
    return m, (f"KernelStudent: lift C->{taps * t.channels}, IntegralTransform(H={taps} "
               f"(one per tap), R={R}, content=False, normalize='none', window={k // 2}, "
               f"pos_dim={D}, offset_embedding, relative_positions), head ->C")


def _mha_student(t: Teacher, R: int):
    H = t.extra["heads"]
    m = KernelStudent(t.channels, t.channels, H, t.pos, kernel_hidden=R, content=True,
                      normalize="softmax", relative_positions=True)
    return m, (f"IntegralTransform(E={t.channels}, H={H}, R={R}, content=True, "
               f"normalize='softmax', relative_positions)")


def _causal_layer(normalize: str):
    """One causal layer between a lift and a head: ``none`` without the content term (a
    linear operator over the past), ``softmax`` with it."""
    content = normalize == "softmax"

    def build(t: Teacher, R: int):
        E, H = 4 * t.channels, 4
        m = KernelStudent(t.channels, E, H, t.pos, skip=True, kernel_hidden=R, content=content,
                          normalize=normalize, causal=True, relative_positions=True)
        return m, (f"KernelStudent: lift C->{E}, IntegralTransform(H={H}, R={R}, "
                   f"content={content}, normalize={normalize!r}, causal, relative_positions, "
                   f"positions t/8), head ->C, + linear skip")
    return build


def _scan(t: Teacher, R: int):
    E, H = 2 * t.channels, 4
    return ScanStudent(t.channels, E, H, R), (
        f"affine lift C->{E}, ScanMixer(E={E}, groups={H}, rank={R}), head ->C, + linear "
        f"skip (R is the scan rank: this kernel has no pair MLP)")


def _stack2(t: Teacher, R: int):
    E = 2 * t.channels
    cfg = OperatorConfig(E, num_heads=4, kernel_hidden=R, content=True, normalize="softmax",
                         relative_positions=True, mlp_ratio=2.0)
    return StackStudent(t.channels, E, cfg, t.pos), (
        f"Linear C->{E}, 2 causal dense ITNetBlocks (H=4, R={R}, content + MLP, softmax, "
        f"relative_positions, MLP ratio 2), LayerNorm, Linear ->C")


# family -> {config name: builder(teacher, R) -> (module, description)}; the first is the
# family's main configuration
STUDENTS: Dict[str, Dict[str, Callable]] = {
    "conv1d": {"conv": _conv_student},
    "conv2d": {"conv": _conv_student},
    "mha": {"softmax": _mha_student},
    "causal": {"causal-none": _causal_layer("none"),
               "causal-softmax": _causal_layer("softmax"),
               "scan": _scan, "stack2": _stack2},
}


def build_student(t: Teacher, config: str, R: int, seed: int):
    torch.manual_seed(derived_seed(seed, "student", t.name, config, R))
    return STUDENTS[t.family][config](t, R)


# --------------------------------------------------------------------------------------
# the trivial baseline
# --------------------------------------------------------------------------------------
def lstsq_fit(x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
    """Least-squares pointwise linear map y_n ~ W x_n + b over all (sequence, position)
    rows, in float64: returns W (C_out, C_in), b (C_out)."""
    X = x.reshape(-1, x.shape[-1]).double()
    X1 = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype)], 1)
    sol = torch.linalg.lstsq(X1, y.reshape(-1, y.shape[-1]).double()).solution
    return sol[:-1].T.contiguous(), sol[-1].clone()


def lstsq_apply(W: Tensor, b: Tensor, x: Tensor) -> Tensor:
    return (x.double() @ W.T + b).to(x.dtype)
