"""A table of hostile inputs for every public op and layer (tests/test_bad_inputs.py runs it in
a subprocess, where a crash or a hang cannot take the test session with it).

Each case is (name, call, expect):
- expect ("raises", prefix): a ValueError or TypeError whose message starts with ``prefix``
  (the argument's name), never another exception, a crash or a hang;
- expect ("finite", shape): a valid edge input (empty dims): the output has ``shape`` and
  holds no NaN.

Classes covered per op: wrong rank, wrong size, wrong dtype (integer, mixed floats), another
device (meta), a non-tensor, NaN / inf where values are checked, empty dimensions.
Run directly: ``python tests/bad_input_cases.py`` prints one JSON line per case.
"""
import json
import math
import sys

import torch

F32, F64 = torch.float32, torch.float64


def _t(*shape, dtype=F64, device="cpu", fill=None):
    g = torch.Generator().manual_seed(sum(shape) + 1)
    x = torch.randn(*shape, generator=g, dtype=F64).to(dtype)
    if fill is not None:
        x = torch.full(shape, fill, dtype=dtype)
    return x.to(device)


def _caller(fn, **base):
    """call(**over): a case that calls fn with base's arguments, some replaced by ``over``."""
    def call(**over):
        kw = {**base, **over}
        return lambda: fn(**kw)
    return call


def _dense_cases(F):
    q, k, v = _t(2, 2, 5, 4), _t(2, 2, 6, 4), _t(2, 2, 6, 3)
    call = _caller(F.integral_transform, q=q, k=k, v=v)
    return [
        ("dense/q-rank", call(q=_t(2, 5, 4)), ("raises", "q:")),
        ("dense/k-size", call(k=_t(2, 2, 6, 5)), ("raises", "k:")),
        ("dense/v-int", call(v=torch.ones(2, 2, 6, 3, dtype=torch.long)), ("raises", "v:")),
        ("dense/k-mixed-dtype", call(k=k.float()), ("raises", "k:")),
        ("dense/q-meta", call(q=q.to("meta")), ("raises", "q:")),
        ("dense/q-list", call(q=[[1.0]]), ("raises", "q:")),
        ("dense/W2-rank", call(W2=_t(2)), ("raises", "W2:")),
        ("dense/u-without-W2", call(u=_t(2, 5, 3)), ("raises", "")),
        ("dense/kpm-float", call(key_padding_mask=torch.zeros(2, 6)), ("raises", "key_padding_mask:")),
        ("dense/kpm-shape", call(key_padding_mask=torch.zeros(2, 5, dtype=torch.bool)),
         ("raises", "key_padding_mask:")),
        ("dense/mask-shape", call(attn_mask=torch.zeros(3, 6, dtype=torch.bool)), ("raises", "attn_mask:")),
        ("dense/key_weight-zero", call(key_weight=torch.zeros(2, 6, dtype=F64)), ("raises", "key_weight:")),
        ("dense/key_weight-nan", call(key_weight=_t(2, 6, fill=math.nan)), ("raises", "key_weight:")),
        ("dense/q_pos-nan", call(q_pos=_t(1, 5, 1, fill=math.nan), window=[(-1, 1)]), ("raises", "q_pos:")),
        ("dense/k_pos-inf", call(k_pos=_t(1, 6, 1, fill=math.inf), window=[(-1, 1)]), ("raises", "k_pos:")),
        ("dense/window-bad", call(window=[(1, -1)]), ("raises", "window")),
        ("dense/normalize", call(normalize="sum"), ("raises", "normalize")),
        ("dense/activation", call(W2=_t(2, 3), activation="tanh"), ("raises", "activation")),
        ("dense/scale-nan", call(scale=math.nan), ("raises", "scale")),
        ("dense/N0", call(q=_t(2, 2, 0, 4)), ("finite", (2, 2, 0, 3))),
        ("dense/M0", call(k=_t(2, 2, 0, 4), v=_t(2, 2, 0, 3)), ("finite", (2, 2, 5, 3))),
        ("dense/B0", call(q=_t(0, 2, 5, 4), k=_t(0, 2, 6, 4), v=_t(0, 2, 6, 3)), ("finite", (0, 2, 5, 3))),
    ]


def _sparse_cases(F):
    q, k, v = _t(2, 2, 5, 4), _t(2, 2, 6, 4), _t(2, 2, 6, 3)
    idx = torch.randint(0, 6, (2, 5, 3), generator=torch.Generator().manual_seed(0))
    call = _caller(F.sparse_integral_transform, q=q, k=k, v=v, idx=idx)
    return [
        ("sparse/idx-range", call(idx=idx + 6), ("raises", "idx:")),
        ("sparse/idx-float", call(idx=idx.double()), ("raises", "idx:")),
        ("sparse/idx-shape", call(idx=idx[:, :4]), ("raises", "idx:")),
        ("sparse/log_w-nan", call(log_w=_t(2, 5, 3, fill=math.nan)), ("raises", "log_w:")),
        ("sparse/both-forms", call(row_ptr=torch.zeros(2, 6, dtype=torch.long),
                                   col_idx=torch.zeros(2, 0, dtype=torch.long)), ("raises", "")),
        ("sparse/row_ptr-decreasing", call(idx=None, row_ptr=torch.tensor([[0, 2, 1, 3, 3, 3]] * 2),
                                           col_idx=torch.zeros(2, 3, dtype=torch.long)), ("raises", "row_ptr")),
        ("sparse/v-meta", call(v=v.to("meta")), ("raises", "")),
        ("sparse/q-rank", call(q=_t(2, 5, 4)), ("raises", "q:")),
        ("sparse/k_pos-inf", call(q_pos=_t(1, 5, 1), k_pos=_t(1, 6, 1, fill=math.inf), window=[(-1, 1)]),
         ("raises", "k_pos:")),
        ("sparse/S0", call(idx=torch.zeros(2, 5, 0, dtype=torch.long)), ("finite", (2, 2, 5, 3))),
        ("sparse/N0", call(q=_t(2, 2, 0, 4), idx=torch.zeros(2, 0, 3, dtype=torch.long)),
         ("finite", (2, 2, 0, 3))),
    ]


def _lowrank_cases(F):
    q, k, v = _t(2, 2, 5, 4), _t(2, 2, 6, 4), _t(2, 2, 6, 3)
    call = _caller(F.lowrank_integral_transform, q=q, k=k, v=v)
    return [
        ("lowrank/q-rank", call(q=_t(5, 4)), ("raises", "q:")),
        ("lowrank/k-size", call(k=_t(2, 2, 6, 3)), ("raises", "k:")),
        ("lowrank/v-int", call(v=torch.ones(2, 2, 6, 3, dtype=torch.long)), ("raises", "v:")),
        ("lowrank/feature_map", call(feature_map="bogus"), ("raises", "feature_map")),
        ("lowrank/normalize", call(normalize="sum"), ("raises", "normalize")),
        ("lowrank/eps-negative", call(eps=-1.0), ("raises", "eps")),
        ("lowrank/N0", call(q=_t(2, 2, 0, 4)), ("finite", (2, 2, 0, 3))),
        ("lowrank/M0", call(k=_t(2, 2, 0, 4), v=_t(2, 2, 0, 3)), ("finite", (2, 2, 5, 3))),
    ]


def _scan_cases(F):
    x, ld, phi, psi = _t(2, 7, 3), -_t(2, 7, 3, 2).abs(), _t(2, 7, 2), _t(2, 7, 2)
    scan, step = F.decay_scan, F.decay_scan_step
    return [
        ("scan/x-rank", lambda: scan(_t(7, 3), ld, phi, psi), ("raises", "x:")),
        ("scan/phi-size", lambda: scan(x, ld, _t(2, 6, 2), psi), ("raises", "phi")),
        ("scan/log_decay-shape", lambda: scan(x, _t(2, 7, 4, 2), phi, psi), ("raises", "log_decay")),
        ("scan/x-int", lambda: scan(torch.ones(2, 7, 3, dtype=torch.long), ld, phi, psi), ("raises", "x:")),
        ("scan/psi-mixed-dtype", lambda: scan(x, ld, phi, psi.float()), ("raises", "psi")),
        ("scan/initial_state-shape", lambda: scan(x, ld, phi, psi, initial_state=_t(2, 3, 3)),
         ("raises", "initial_state:")),
        ("scan/stable-positive", lambda: scan(x, -ld, phi, psi, stable=True), ("raises", "log_decay")),
        ("scan/T0", lambda: scan(_t(2, 0, 3), _t(2, 0, 3, 2), _t(2, 0, 2), _t(2, 0, 2)), ("finite", (2, 0, 3))),
        ("step/state-None", lambda: step(x[:, 0], ld[:, 0], phi[:, 0], psi[:, 0], None), ("raises", "state:")),
        ("step/state-shape", lambda: step(x[:, 0], ld[:, 0], phi[:, 0], psi[:, 0], _t(2, 3, 5)),
         ("raises", "state:")),
        ("step/x_t-rank", lambda: step(x, ld[:, 0], phi[:, 0], psi[:, 0], _t(2, 3, 2)), ("raises", "x_t:")),
    ]


def _layer_cases():
    from itnet_ext.nn import IntegralTransform
    from itnet_ext.recurrence import S4D, MambaMixer, MinGRU, MinLSTM
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    out = []
    for method, kw in (("dense", {}), ("sampled", {"samples": 3}), ("lowrank", {"rank": 4})):
        layer = IntegralTransform(16, 2, method=method, batch_first=True, **kw)
        out += [
            (f"layer-{method}/embed", lambda L=layer: L(torch.randn(2, 5, 15)), ("raises", "")),
            (f"layer-{method}/dtype", lambda L=layer: L(x.double()), ("raises", "query must have dtype")),
            (f"layer-{method}/kpm-shape", lambda L=layer: L(x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool)),
             ("raises", "key_padding_mask")),
            (f"layer-{method}/kpm-nan", lambda L=layer: L(x, key_padding_mask=torch.full((2, 5), math.nan)),
             ("raises", "key_padding_mask")),
            (f"layer-{method}/N0", lambda L=layer: L(torch.randn(2, 0, 16)), ("finite", (2, 0, 16))),
        ]
    out += [
        ("s4d/channels", lambda: S4D(8)(torch.randn(2, 5, 7)), ("raises", "x:")),
        ("mamba/2d", lambda: MambaMixer(8)(torch.randn(5, 8)), ("raises", "u:")),
        ("mingru/dtype", lambda: MinGRU(8, 4)(torch.randn(2, 5, 8, dtype=F64)), ("raises", "x:")),
        ("minlstm/h0", lambda: MinLSTM(8, 4)(torch.randn(2, 5, 8), h0=torch.randn(3, 4)), ("raises", "h0:")),
        ("s4d/T0", lambda: S4D(8)(torch.randn(2, 0, 8)), ("finite", (2, 0, 8))),
    ]
    return out


def cases():
    import itnet_ext  # noqa: F401  (registers the ops)
    from itnet_ext import functional as F
    return (_dense_cases(F) + _sparse_cases(F) + _lowrank_cases(F) + _scan_cases(F)
            + _layer_cases())


def run_case(call, expect):
    """None if the case behaves as expected, else what happened."""
    kind, arg = expect
    try:
        out = call()
    except (ValueError, TypeError) as e:
        if kind != "raises":
            return f"raised {type(e).__name__}: {e}"
        msg = str(e)
        return None if msg.startswith(arg) else f"message does not start with {arg!r}: {msg[:300]}"
    except Exception as e:  # another exception type: not a clear error
        return f"{type(e).__name__} (expected ValueError / TypeError): {str(e)[:300]}"
    if kind == "raises":
        return "no error"
    out = out[0] if isinstance(out, tuple) else out
    if tuple(out.shape) != tuple(arg):
        return f"shape {tuple(out.shape)}, expected {tuple(arg)}"
    if torch.isnan(out).any():
        return "NaN in the output"
    return None


def main():
    for name, call, expect in cases():
        print(json.dumps({"start": name}), flush=True)
        problem = run_case(call, expect)
        print(json.dumps({"case": name, "ok": problem is None, "problem": problem}), flush=True)
    print(json.dumps({"done": True}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
