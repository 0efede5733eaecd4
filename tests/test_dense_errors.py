"""Bad input to the fused dense op raises a clear error naming the argument.

- itnet_ext.functional.integral_transform: ValueError (RuntimeError for dtypes the CPU
  kernels do not implement) whose message starts with / names the offending argument.
- torch.ops.itnet.dense_fwd / dense_bwd called directly: RuntimeError with a clear message;
  never a crash (cases that could crash run in a subprocess) or a silent wrong answer.
"""
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from itnet_ext import functional

F64 = torch.float64
ROOT = Path(__file__).resolve().parent.parent


def rnd(*shape, dtype=F64):
    return torch.randn(*shape, dtype=dtype)


def _good():
    B, H, N, M, R = 2, 2, 3, 4, 3
    return dict(q=rnd(B, H, N, 5), k=rnd(B, H, M, 5), v=rnd(B, H, M, 6), u=rnd(B, N, R),
                t=rnd(1, M, R), W2=rnd(H, R), b2=rnd(H))


def test_good_arguments_run():
    functional.integral_transform(**_good())


NAN, INF = float("nan"), float("inf")
BAD = [
    # ranks
    (dict(v=rnd(2, 2, 4)), r"^v: expected a 4-D tensor"),
    (dict(v=rnd(1, 2, 2, 4, 6)), r"^v: expected a 4-D tensor"),
    (dict(q=rnd(2, 3, 5)), r"^q: expected a 4-D tensor"),
    (dict(k=rnd(2, 2, 4, 5, 1)), r"^k: expected a 4-D tensor"),
    (dict(u=rnd(3, 3)), r"^u: expected a 3-D tensor"),
    (dict(t=rnd(1, 1, 4, 3)), r"^t: expected a 3-D tensor"),
    (dict(W2=rnd(6)), r"^W2: expected a 2-D tensor"),
    (dict(b2=rnd(2, 1)), r"^b2: expected a 1-D tensor"),
    (dict(offset_table=rnd(9), window=(-1, 1)), r"^offset_table: expected a 2-D tensor"),
    (dict(key_weight=rnd(4).abs() + 1), r"^key_weight: expected a 2-D tensor"),
    (dict(key_padding_mask=torch.zeros(4, dtype=torch.bool)), r"^key_padding_mask: expected a 2-D"),
    (dict(window=(-1, 1), q_pos=rnd(3, 1)), r"^q_pos: expected a 3-D tensor"),
    (dict(window=(-1, 1), k_pos=rnd(1, 1, 4, 1)), r"^k_pos: expected a 3-D tensor"),
    (dict(attn_mask=torch.ones(1, 2, 2, 3, 4, dtype=torch.bool)), r"^attn_mask: expected a tensor broadcastable"),
    # shapes
    (dict(q=rnd(1, 2, 3, 5)), r"^q: .*B \(from v\) = 2"),
    (dict(q=rnd(2, 3, 3, 5)), r"^q: .*H \(from v\) = 2"),
    (dict(k=rnd(2, 2, 5, 5)), r"^k: .*M \(from v\) = 4"),
    (dict(k=rnd(2, 2, 4, 6)), r"^k: .*Dk \(from q\) = 5"),
    (dict(u=rnd(2, 4, 3)), r"^u: .*N \(from q\) = 3"),
    (dict(u=rnd(3, 3, 3)), r"^u: .*B \(from v\) = 2 or 1"),
    (dict(u=rnd(2, 3, 2)), r"^u: .*R \(from W2\) = 3"),
    (dict(t=rnd(1, 5, 3)), r"^t: .*M \(from v\) = 4"),
    (dict(t=rnd(1, 4, 4)), r"^t: .*R \(from W2\) = 3"),
    (dict(W2=rnd(3, 3)), r"^W2: .*H \(from v\) = 2"),
    (dict(b2=rnd(3)), r"^b2: .*H \(from v\) = 2"),
    (dict(offset_table=rnd(3, 2), window=(-1, 1)), r"^offset_table: .*R \(from W2\) = 3"),
    (dict(key_weight=torch.ones(2, 5, dtype=F64)), r"^key_weight: .*M \(from v\) = 4"),
    (dict(key_weight=torch.ones(3, 4, dtype=F64)), r"^key_weight: .*B \(from v\) = 2 or 1"),
    (dict(key_padding_mask=torch.zeros(1, 4, dtype=torch.bool)), r"^key_padding_mask: .*B \(from v\) = 2"),
    (dict(key_padding_mask=torch.zeros(2, 3, dtype=torch.bool)), r"^key_padding_mask: .*M \(from v\) = 4"),
    (dict(attn_mask=torch.ones(3, 5, dtype=torch.bool)), r"^attn_mask: expected a tensor broadcastable to \(B, H, N, M\)"),
    (dict(attn_mask=torch.ones(3, 3, 4, dtype=torch.bool)), r"^attn_mask: expected a tensor broadcastable"),
    (dict(window=(-1, 1), q_pos=rnd(1, 4, 1)), r"^q_pos: .*N \(from q or u\) = 3"),
    (dict(window=(-1, 1), k_pos=rnd(3, 4, 1)), r"^k_pos: .*B \(from v\) = 2 or 1"),
    (dict(window=[(-1, 1), (-1, 1)], q_pos=rnd(1, 3, 2), k_pos=rnd(1, 4, 1)), r"^k_pos: .*D = 2 \(from q_pos\)"),
    (dict(window=[(-1, 1), (-1, 1)], q_pos=rnd(1, 3, 2)), r"^k_pos: defaults to arange with D = 1"),
    (dict(window=[(-1, 1), (-1, 1)]), r"^window: expected 1 \(lo, hi\) pair"),
    # dtypes
    (dict(q=rnd(2, 2, 3, 5, dtype=torch.float32)), r"^q: expected dtype torch.float64 \(same as v\), got torch.float32"),
    (dict(k=rnd(2, 2, 4, 5, dtype=torch.float32)), r"^k: expected dtype torch.float64"),
    (dict(u=rnd(2, 3, 3, dtype=torch.float32)), r"^u: expected dtype torch.float64"),
    (dict(t=rnd(1, 4, 3, dtype=torch.float32)), r"^t: expected dtype torch.float64"),
    (dict(W2=rnd(2, 3, dtype=torch.float32)), r"^W2: expected dtype torch.float64"),
    (dict(b2=rnd(2, dtype=torch.float32)), r"^b2: expected dtype torch.float64"),
    (dict(offset_table=rnd(3, 3, dtype=torch.float32), window=(-1, 1)), r"^offset_table: expected dtype torch.float64"),
    (dict(key_weight=torch.ones(1, 4)), r"^key_weight: expected dtype torch.float64"),
    (dict(q=torch.ones(2, 2, 3, 5, dtype=torch.long)), r"^q: expected dtype torch.float64"),
    (dict(v=torch.ones(2, 2, 4, 6, dtype=torch.long)), r"^v: expected a floating-point tensor"),
    (dict(key_padding_mask=torch.zeros(2, 4)), r"^key_padding_mask: expected dtype torch.bool"),
    (dict(attn_mask=torch.ones(3, 4, dtype=torch.int32)), r"^attn_mask: expected dtype torch.bool or torch.float64"),
    (dict(attn_mask=torch.ones(3, 4, dtype=torch.float32)), r"^attn_mask: expected dtype torch.bool or torch.float64"),
    (dict(window=(-1, 1), q_pos=torch.zeros(1, 3, 1, dtype=torch.long)), r"^q_pos: expected a floating-point tensor"),
    # devices (meta as the second device)
    (dict(q=rnd(2, 2, 3, 5).to("meta")), r"^q: expected all tensors on the same device as v \(cpu\), got meta"),
    (dict(k=rnd(2, 2, 4, 5).to("meta")), r"^k: expected all tensors on the same device"),
    (dict(W2=rnd(2, 3).to("meta")), r"^W2: expected all tensors on the same device"),
    (dict(t=rnd(1, 4, 3).to("meta")), r"^t: expected all tensors on the same device"),
    (dict(key_padding_mask=torch.zeros(2, 4, dtype=torch.bool, device="meta")), r"^key_padding_mask: expected all tensors on the same device"),
    (dict(attn_mask=torch.ones(3, 4, dtype=torch.bool, device="meta")), r"^attn_mask: expected all tensors on the same device"),
    (dict(window=(-1, 1), q_pos=torch.zeros(1, 3, 1, dtype=F64, device="meta")), r"^q_pos: expected all tensors on the same device"),
    # options and values
    (dict(window=(2, 1)), r"^window: expected lo <= hi"),
    (dict(window=[(0.5, -0.5)]), r"^window: expected lo <= hi"),
    (dict(window=(NAN, 1)), r"^window: .*NaN"),
    (dict(window="ab"), r"^window: expected a pair"),
    (dict(offset_table=rnd(5, 3)), r"^offset_table: requires a window"),
    (dict(offset_table=rnd(2, 3), window=(-1, 1)), r"^offset_table: expected at least 3 rows"),
    (dict(offset_table=rnd(8, 3), window=[(-1, 1), (0, 2)], q_pos=torch.zeros(1, 3, 2, dtype=F64),
          k_pos=torch.zeros(1, 4, 2, dtype=F64)), r"^offset_table: expected at least 9 rows"),
    (dict(offset_table=rnd(3, 3), window=[(-3e9, 3e9)] * 3, q_pos=torch.zeros(1, 3, 3, dtype=F64),
          k_pos=torch.zeros(1, 4, 3, dtype=F64)), r"^offset_table: expected at least"),
    (dict(offset_table=rnd(5, 3), window=(-0.5, 1)), r"^offset_table: requires window bounds .*integer"),
    (dict(offset_table=rnd(5, 3), window=(-INF, 1)), r"^offset_table: requires window bounds"),
    (dict(offset_table=rnd(3, 3), window=(-1, 1), q_pos=torch.full((1, 3, 1), 0.5, dtype=F64)),
     r"^q_pos: offset_table requires integer-valued positions"),
    (dict(offset_table=rnd(3, 3), window=(-1, 1), k_pos=torch.arange(4.0, dtype=F64).view(1, 4, 1) + 0.25),
     r"^k_pos: offset_table requires integer-valued positions"),
    (dict(offset_table=rnd(3, 3), window=(-1, 1), q_pos=torch.full((1, 3, 1), INF, dtype=F64)),
     r"^q_pos: contains NaN or inf \(positions must be finite\)"),
    # inf positions: the offset inf - inf would be NaN; the rule is finite positions
    (dict(window=(-10, 10), q_pos=torch.full((1, 3, 1), INF, dtype=F64),
          k_pos=torch.full((1, 4, 1), INF, dtype=F64)), r"^q_pos: contains NaN or inf"),
    (dict(window=(-10, 10), k_pos=torch.tensor([[[0.0], [-INF], [2.0], [3.0]]], dtype=F64)),
     r"^k_pos: contains NaN or inf"),
    (dict(window=(-1, 1), q_pos=torch.full((1, 3, 1), NAN, dtype=F64)), r"^q_pos: contains NaN"),
    (dict(window=(-1, 1), k_pos=torch.tensor([[[0.0], [NAN], [2.0], [3.0]]], dtype=F64)), r"^k_pos: contains NaN"),
    (dict(key_weight=torch.zeros(1, 4, dtype=F64)), r"^key_weight: expected strictly positive"),
    (dict(key_weight=-torch.ones(2, 4, dtype=F64)), r"^key_weight: expected strictly positive"),
    (dict(key_weight=torch.tensor([[1.0, 1.0, NAN, 1.0]], dtype=F64)), r"^key_weight: expected strictly positive"),
    (dict(attn_mask=rnd(3, 4).requires_grad_()), r"^attn_mask: gradients w.r.t. the attention mask"),
    (dict(normalize="none", return_lse=True), r"^return_lse: .*softmax"),
    (dict(normalize="sparsemax"), r"^normalize: expected one of"),
    (dict(activation="tanh"), r"^activation: expected one of"),
    (dict(causal="yes"), r"^causal: expected a bool"),
    (dict(scale=NAN), r"^scale: expected a real number"),
    (dict(scale="x"), r"^scale: expected a real number"),
    # missing pieces
    (dict(v=None), r"^v: .*required"),
    (dict(k=None), r"^k: the content term needs both q and k"),
    (dict(q=None), r"^q: the content term needs both q and k"),
    (dict(q=None, k=None, W2=None, u=None, t=None, b2=None), r"no term enabled"),
    (dict(W2=None), r"^u: .*W2"),
    (dict(W2=None, u=None, t=None, b2=rnd(2)), r"^b2: .*W2"),
    (dict(q=None, k=None, u=None), r"cannot determine N"),
]


@pytest.mark.parametrize("bad,match", BAD, ids=[f"{i}-{m.strip('^').split(':')[0][:18]}"
                                                for i, (_, m) in enumerate(BAD)])
def test_functional_bad_input_raises_value_error(bad, match):
    kw = _good()
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        functional.integral_transform(**kw)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_functional_unsupported_dtype_names_v(dtype):
    kw = {n: x.to(dtype) for n, x in _good().items()}
    with pytest.raises((ValueError, RuntimeError), match=r"v: expected dtype float32 or float64"):
        functional.integral_transform(**kw)


# --------------------------------------------------------------------------------------------
# direct calls of the registered ops
# --------------------------------------------------------------------------------------------
def op_args(**over):
    """Positional args of torch.ops.itnet.dense_fwd: a valid content-only call, overridden."""
    q, k, v = rnd(1, 2, 8, 3), rnd(1, 2, 8, 3), rnd(1, 2, 8, 2)
    a = dict(q=q, k=k, v=v, u=None, t=None, W2=None, b2=None, offset_table=None, q_pos=None,
             k_pos=None, key_weight=None, key_padding_mask=None, attn_mask=None, window_lo=[],
             window_hi=[], scale=0.5, activation=1, softmax=True, causal=False)
    a.update(over)
    return tuple(a.values())


W2, E = rnd(2, 4), rnd(3, 4)
POS8 = torch.arange(8, dtype=F64).view(1, 8, 1)
OP_BAD = [
    (dict(v=rnd(8, 2)), r"v: expected a 4-D tensor"),
    (dict(v=torch.ones(1, 2, 8, 2, dtype=torch.long)), r"v: expected dtype float32 or float64"),
    (dict(v=rnd(1, 2, 8, 2).half(), q=rnd(1, 2, 8, 3).half(), k=rnd(1, 2, 8, 3).half()), r"v: expected dtype float32 or float64"),
    (dict(q=rnd(8, 3)), r"q: expected shape"),
    (dict(q=rnd(1, 3, 8, 3)), r"q: expected shape"),
    (dict(k=rnd(1, 2, 7, 3)), r"k: expected shape"),
    (dict(k=rnd(1, 2, 8, 4)), r"k: expected shape"),
    (dict(k=None), r"q, k: give both"),
    (dict(q=rnd(1, 2, 8, 3).float()), r"q: expected dtype"),
    (dict(q=None, k=None), r"no logit term"),
    (dict(W2=rnd(3, 4)), r"W2: expected shape"),
    (dict(W2=rnd(8)), r"W2: expected shape"),
    (dict(W2=W2, activation=7), r"activation: expected 0 \(relu\), 1 \(gelu\) or 2 \(silu\)"),
    (dict(W2=W2, activation=-1), r"activation: expected"),
    (dict(W2=W2, b2=rnd(3)), r"b2: expected shape"),
    (dict(W2=W2, u=rnd(1, 7, 4)), r"u: expected shape"),
    (dict(W2=W2, u=rnd(8, 4)), r"u: expected shape"),
    (dict(W2=W2, u=rnd(3, 8, 4)), r"u: expected batch size"),
    (dict(W2=W2, t=rnd(1, 8, 5)), r"t: expected shape"),
    (dict(W2=W2, t=rnd(1, 8, 4).float()), r"t: expected dtype"),
    (dict(u=rnd(1, 8, 4)), r"the MLP term needs W2"),
    (dict(W2=W2, offset_table=E), r"offset_table: needs a window"),
    (dict(W2=W2, offset_table=E, window_lo=[-5.0], window_hi=[5.0]), r"offset_table: expected at least 11 rows"),
    (dict(W2=W2, offset_table=rnd(20), window_lo=[-1.0], window_hi=[1.0]), r"offset_table: expected shape"),
    (dict(W2=W2, offset_table=rnd(3, 5), window_lo=[-1.0], window_hi=[1.0]), r"offset_table: expected shape"),
    (dict(W2=W2, offset_table=E, window_lo=[-0.5], window_hi=[1.5]), r"offset_table: needs a window with finite integer bounds"),
    (dict(W2=W2, offset_table=rnd(11, 4), window_lo=[-5.0], window_hi=[5.0],
          q_pos=torch.rand(1, 8, 1, dtype=F64), k_pos=POS8), r"offset_table needs integer-valued positions"),
    (dict(window_lo=[0.0], window_hi=[]), r"window: lo and hi must have the same length"),
    (dict(window_lo=[1.0], window_hi=[0.0]), r"window: expected lo <= hi"),
    (dict(window_lo=[NAN], window_hi=[1.0]), r"window: expected lo <= hi"),
    (dict(window_lo=[0.0] * 9, window_hi=[1.0] * 9), r"window: at most 8 position dims"),
    (dict(window_lo=[-1.0, -1.0], window_hi=[1.0, 1.0]), r"q_pos: required for a window of 2 position dims"),
    (dict(window_lo=[-1.0], window_hi=[1.0], q_pos=torch.full((1, 8, 1), NAN, dtype=F64)), r"q_pos: contains NaN"),
    (dict(window_lo=[-1.0], window_hi=[1.0], k_pos=torch.full((1, 8, 1), NAN, dtype=F64)), r"k_pos: contains NaN"),
    (dict(window_lo=[-9.0], window_hi=[9.0], q_pos=torch.full((1, 8, 1), INF, dtype=F64),
          k_pos=torch.full((1, 8, 1), INF, dtype=F64)), r"q_pos: contains NaN or inf"),
    (dict(window_lo=[-9.0], window_hi=[9.0], k_pos=-torch.full((1, 8, 1), INF, dtype=F64)),
     r"k_pos: contains NaN or inf \(positions must be finite\)"),
    (dict(window_lo=[-1.0], window_hi=[1.0], q_pos=torch.zeros(1, 8, 1, dtype=torch.long)), r"q_pos: expected a floating-point"),
    (dict(window_lo=[-1.0], window_hi=[1.0], q_pos=torch.zeros(3, 8, 1, dtype=F64)), r"q_pos: expected shape"),
    (dict(window_lo=[-1.0], window_hi=[1.0], k_pos=torch.zeros(1, 7, 1, dtype=F64)), r"k_pos: expected shape"),
    (dict(key_weight=-torch.ones(1, 8, dtype=F64)), r"key_weight: expected finite positive weights"),
    (dict(key_weight=torch.ones(8, dtype=F64)), r"key_weight: expected shape"),
    (dict(key_weight=torch.ones(1, 8)), r"key_weight: expected dtype"),
    (dict(key_padding_mask=torch.zeros(1, 3, dtype=torch.bool)), r"key_padding_mask: expected shape"),
    (dict(key_padding_mask=torch.zeros(1, 8)), r"key_padding_mask: expected dtype bool"),
    (dict(attn_mask=torch.zeros(1, 1, 1, 8, 8, dtype=F64)), r"attn_mask: expected at most 4 dims"),
    (dict(attn_mask=torch.zeros(3, 8, dtype=F64)), r"attn_mask: shape .* is not broadcastable to \(B, H, N, M\)"),
    (dict(attn_mask=torch.zeros(8, 8, dtype=torch.long)), r"attn_mask: expected a bool or floating-point"),
]


@pytest.mark.parametrize("over,match", OP_BAD, ids=[f"{i}-{m.split(':')[0][:18]}"
                                                    for i, (_, m) in enumerate(OP_BAD)])
def test_direct_dense_fwd_bad_args_raise_runtime_error(over, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.itnet.dense_fwd(*op_args(**over))


def _bwd_args(**over):
    args = op_args(**over)
    out, lse = torch.ops.itnet.dense_fwd(*args)
    return args, out, lse


def test_direct_dense_bwd_bad_args_raise_runtime_error():
    args, out, lse = _bwd_args()
    with pytest.raises(RuntimeError, match=r"grad_out: expected shape"):
        torch.ops.itnet.dense_bwd(rnd(1, 2, 8, 5), out, lse, None, *args)
    with pytest.raises(RuntimeError, match=r"out: expected shape"):
        torch.ops.itnet.dense_bwd(torch.randn_like(out), out[:, :, :3], lse, None, *args)
    with pytest.raises(RuntimeError, match=r"lse: expected shape"):
        torch.ops.itnet.dense_bwd(torch.randn_like(out), out, lse[:, :, :3], None, *args)
    with pytest.raises(RuntimeError, match=r"lse: expected shape"):  # none-mode lse, softmax bwd
        torch.ops.itnet.dense_bwd(torch.randn_like(out), out, out.new_empty(0), None, *args)
    with pytest.raises(RuntimeError):
        torch.ops.itnet.dense_bwd(torch.randn_like(out), out, lse, rnd(5), *args)
    with pytest.raises(RuntimeError, match=r"v: expected a 4-D tensor"):
        bad = list(args)
        bad[2] = rnd(8, 2)
        torch.ops.itnet.dense_bwd(torch.randn_like(out), out, lse, None, *bad)


def test_direct_dense_bwd_none_mode_accepts_empty_lse():
    args, out, lse = _bwd_args(softmax=False)
    assert lse.numel() == 0
    grads = torch.ops.itnet.dense_bwd(torch.randn_like(out), out, lse, None, *args)
    assert grads[0].shape == args[0].shape and grads[2].shape == args[2].shape


def test_direct_dense_fwd_degenerate_sizes_do_not_crash():
    """Empty B / H / N / M / Dv / R and Dk = 0 are valid and give well-formed outputs."""
    q, k, v = rnd(1, 2, 8, 3), rnd(1, 2, 8, 3), rnd(1, 2, 8, 2)
    for over in [dict(k=k[:, :, :0], v=v[:, :, :0]), dict(q=q[:, :, :0]),
                 dict(q=q[..., :0], k=k[..., :0]), dict(v=v[..., :0]),
                 dict(q=q[:, :0], k=k[:, :0], v=v[:, :0]), dict(q=q[:0], k=k[:0], v=v[:0]),
                 dict(W2=rnd(2, 0))]:
        out, lse = torch.ops.itnet.dense_fwd(*op_args(**over))
        assert torch.isfinite(out).all()


# --------------------------------------------------------------------------------------------
# crashes / silent garbage in direct calls (found by these tests; see the reasons)
# --------------------------------------------------------------------------------------------
def _run_isolated(code):
    """Run code in a fresh interpreter (a segfault must not take pytest down)."""
    src = ("import math, torch, itnet_ext\nF64 = torch.float64\ninf = math.inf\n"
           + textwrap.dedent(code))
    return subprocess.run([sys.executable, "-c", src], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                                            "PATH": "/usr/bin:/bin", **_SANITIZER_ENV})


# the sanitizer stage (scripts/sanitize_tests.sh) preloads its runtimes: the child needs them too
_SANITIZER_ENV = {k: os.environ[k] for k in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")
                  if k in os.environ}


_HUGE_WINDOW = """
v = torch.randn(1, 1, 8, 2, dtype=F64); q = torch.randn(1, 1, 8, 3, dtype=F64)
W2 = torch.randn(1, 4, dtype=F64); E = torch.randn(3, 4, dtype=F64)
pos = torch.zeros(1, 8, {D}, dtype=F64)
try:
    out, _ = torch.ops.itnet.dense_fwd(q, q, v, None, None, W2, None, E, pos, pos, None, None,
                                       None, {lo}, {hi}, 1.0, 1, True, False)
    print("NO ERROR", out.sum().item())
except RuntimeError as e:
    print("RuntimeError", e)
"""


@pytest.mark.parametrize("lo,hi", [([-3e9] * 3, [3e9] * 3), ([-math.inf], [math.inf]),
                                   ([-2.0 ** 62], [2.0 ** 62])], ids=["3d-overflow", "inf", "2^62"])
def test_direct_offset_table_window_volume_overflow_raises(lo, hi):
    r = _run_isolated(_HUGE_WINDOW.format(lo=lo, hi=hi, D=len(lo)))
    assert r.returncode == 0, f"crashed (rc={r.returncode}): {r.stderr[-500:]}"
    assert r.stdout.startswith("RuntimeError") and "offset_table" in r.stdout, r.stdout


@pytest.mark.parametrize("which", ["q", "key_padding_mask", "attn_mask"])
def test_direct_dense_fwd_mixed_meta_device_raises(which):
    over = {"q": dict(q=rnd(1, 2, 8, 3).to("meta")),
            "key_padding_mask": dict(key_padding_mask=torch.zeros(1, 8, dtype=torch.bool, device="meta")),
            "attn_mask": dict(attn_mask=torch.zeros(8, 8, dtype=torch.bool, device="meta"))}[which]
    with pytest.raises(RuntimeError, match=which):
        torch.ops.itnet.dense_fwd(*op_args(**over))


def test_direct_dense_bwd_dtype_mismatch_raises():
    code = """
    q, k, v = (torch.randn(1, 1, 8, 3, dtype=F64) for _ in range(3))
    args = (q, k, v) + (None,) * 10 + ([], [], 1.0, 1, True, False)
    out, lse = torch.ops.itnet.dense_fwd(*args)
    for go, o, l in [(torch.randn_like(out).float(), out, lse), (torch.randn_like(out), out.float(), lse),
                     (torch.randn_like(out), out, lse.float())]:
        try:
            torch.ops.itnet.dense_bwd(go, o, l, None, *args)
            print("NO ERROR")
        except RuntimeError as e:
            print("RuntimeError")
    """
    r = _run_isolated(code)
    assert r.returncode == 0, f"crashed (rc={r.returncode}): {r.stderr[-500:]}"
    assert r.stdout.split() == ["RuntimeError"] * 3, r.stdout
