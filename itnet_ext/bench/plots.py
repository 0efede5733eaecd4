"""Figures of the bench sections, written as PNG beside their JSON (matplotlib, Agg).

Each ``plot_*(result, png)`` reads only the result dict, so a stored JSON can be drawn
again: ``python -m itnet_ext.bench.plots bench/results/<file>.json``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["plot_main", "plot_scan", "plot_sparse", "plot_lowrank", "plot_peers", "plot_any"]


def _figure(ncols, title):
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 4.0), squeeze=False)
    fig.suptitle(title, fontsize=10)
    return fig, axes[0]


def _save(fig, png):
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return png


def _title(result, what):
    m = result.get("meta", {})
    return (f"itnet_ext {what}: {m.get('device', '?')}, {m.get('threads', '?')} threads, "
            f"torch {m.get('torch_version', '?')}, {str(m.get('git_commit') or '?')[:8]}")


def _loglog(ax, xlabel, ylabel):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # an empty panel (a part not run) has no legend
        ax.legend(fontsize=7)


def plot_main(result, png):
    """Time and peak extra memory vs N (fwd+bwd) of every implementation."""
    fig, (ax_t, ax_m) = _figure(2, _title(result, "bench (fwd+bwd)"))
    ms = [m for m in result["measurements"] if m["pass"] == "fwd+bwd" and m["ms"]]
    for impl in sorted({m["impl"] for m in ms}):
        pts = sorted((m["N"], m["ms"], m["peak_extra_mb"]) for m in ms if m["impl"] == impl)
        ax_t.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=impl)
        mem = [p for p in pts if p[2]]
        if mem:
            ax_m.plot([p[0] for p in mem], [p[2] for p in mem], "o-", label=impl)
    _loglog(ax_t, "N", "ms")
    _loglog(ax_m, "N", "peak extra MiB")
    return _save(fig, png)


def plot_scan(result, png):
    """Time vs T of the scan and its baselines, per pass."""
    fig, axes = _figure(2, _title(result, "decay scan"))
    for ax, pas in zip(axes, ("fwd", "fwd+bwd")):
        rows = [r for r in result["rows"] if r["pass"] == pas]
        for impl in sorted({k for r in rows for k, v in r["ms"].items() if v}):
            pts = sorted((r["T"], r["ms"][impl]) for r in rows if r["ms"].get(impl))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=impl)
        ax.set_title(pas, fontsize=9)
        _loglog(ax, "T", "ms")
    return _save(fig, png)


def plot_sparse(result, png):
    """Monte Carlo error vs samples per query (and the S^-1/2 line), and GNO time."""
    fig, (ax_e, ax_t) = _figure(2, _title(result, "sampled / neighbours"))
    # a part not run (--sparse-part mc / gno) is None in the result
    rows = (result.get("mc") or {}).get("rows", [])
    for N in sorted({r["N"] for r in rows}):
        for key in ("err_softmax_mean", "err_none_mean"):
            pts = sorted((r["S"], r[key]) for r in rows if r["N"] == N and r.get(key))
            if pts:
                ax_e.plot([p[0] for p in pts], [p[1] for p in pts], "o-",
                          label=f"N={N} {key.split('_')[1]}")
    if rows:
        s0 = min(r["S"] for r in rows)
        e0 = max(r.get("err_none_mean") or 0 for r in rows if r["S"] == s0)
        ss = sorted({r["S"] for r in rows})
        ax_e.plot(ss, [e0 * (s / s0) ** -0.5 for s in ss], "k--", lw=0.8, label="S^-1/2")
    _loglog(ax_e, "samples per query S", "relative error")
    gno = (result.get("gno") or {}).get("rows", [])
    labels = [f"R={r['R']} {r['pass']}" for r in gno]
    if gno:
        x = range(len(gno))
        ax_t.bar([i - 0.2 for i in x], [r["baseline"]["ms"] or 0 for r in gno], 0.4,
                 label="PyTorch GNO")
        ax_t.bar([i + 0.2 for i in x], [r["fused"]["ms"] or 0 for r in gno], 0.4, label="fused")
        ax_t.set_xticks(list(x), labels, fontsize=7)
        ax_t.set_ylabel("ms")
        ax_t.legend(fontsize=7)
    return _save(fig, png)


def plot_lowrank(result, png):
    """Low-rank vs dense time vs N, and the low-rank error vs N."""
    fig, (ax_t, ax_e) = _figure(2, _title(result, "low rank"))
    rows = result["rows"]
    for impl in ("lowrank", "dense"):
        for pas in ("fwd", "fwd+bwd"):
            ms = [(r["N"], ((r.get(impl) or {}).get(pas) or {}).get("ms")) for r in rows]
            pts = sorted(p for p in ms if p[1])      # a skipped or failed call draws no point
            if pts:
                ax_t.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{impl} {pas}")
    _loglog(ax_t, "N", "ms")
    pts = sorted((r["N"], r["err"]) for r in rows if r.get("err"))
    ax_e.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="relative error")
    _loglog(ax_e, "N", "relative error vs dense")
    return _save(fig, png)


def plot_peers(result, png):
    """Time per comparison (peer vs fused) and FAVOR+ error vs number of features."""
    fig, (ax_t, ax_e) = _figure(2, _title(result, "peers"))
    rows = [r for r in result["rows"] if r["pass"] == "fwd"]
    labels = [f"{r['section']} N={r['N']}\n{r['peer']}" for r in rows]
    x = range(len(rows))
    ax_t.bar([i - 0.2 for i in x], [r["peer_ms"] or 0 for r in rows], 0.4, label="peer (fwd)")
    ax_t.bar([i + 0.2 for i in x], [r["fused_ms"] or 0 for r in rows], 0.4, label="fused (fwd)")
    ax_t.set_xticks(list(x), labels, fontsize=6, rotation=60, ha="right")
    ax_t.set_yscale("log")
    ax_t.set_ylabel("ms")
    ax_t.legend(fontsize=7)
    sweep = result.get("favor_sweep", [])
    for who in ("peer", "fused"):
        pts = sorted((s["F"], s[f"{who}_rel_err"]) for s in sweep)
        if pts:
            ax_e.plot([p[0] for p in pts], [p[1] for p in pts], "o-",
                      label="performer-pytorch" if who == "peer" else "lowrank op (FAVOR+)")
    if sweep:
        _loglog(ax_e, "random features F", "relative error vs exact softmax")
    return _save(fig, png)


def plot_any(result, png):
    """The figure of whichever section wrote ``result``."""
    argv = result.get("meta", {}).get("argv") or []
    if "favor_sweep" in result or "--peers" in argv:
        return plot_peers(result, png)
    if "mc" in result or "gno" in result:
        return plot_sparse(result, png)
    if "crossover" in result:
        return plot_lowrank(result, png)
    if result.get("rows") and "T" in result["rows"][0]:
        return plot_scan(result, png)
    if "measurements" in result and result["measurements"] and "impl" in result["measurements"][0]:
        return plot_main(result, png)
    raise ValueError("no figure for this result (not a main / scan / sparse / lowrank / "
                     "peers bench JSON)")


if __name__ == "__main__":  # pragma: no cover - a convenience command
    import matplotlib
    matplotlib.use("Agg")
    for name in sys.argv[1:]:
        p = Path(name)
        print(plot_any(json.loads(p.read_text()), p.with_suffix(".png")))
