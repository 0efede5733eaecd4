"""Recovery experiments: can an ITNet layer, trained from scratch, imitate a frozen random
teacher module? Held-out relative output error vs training steps and vs kernel width R.

    python -m itnet_ext.experiments.recovery [--teachers conv1d,conv2d,mha,gru,lstm,mamba]
        [--widths 4,16,32] [--steps N] [--seed S] [--out bench/results] [--quick]

Teachers (:mod:`~itnet_ext.experiments.recovery_teachers`): nn.Conv1d, nn.Conv2d,
nn.MultiheadAttention, nn.GRU, nn.LSTM and the MambaMixer, frozen at a seeded random
initialisation, their outputs normalised on a calibration set. Students: IntegralTransform
layers with a pair-MLP kernel of width R and the settings of the teacher's family, trained
by Adam (warmup + cosine) on fresh Gaussian batches every step to minimise the MSE to the
teacher; no converter is used. The causal teachers (GRU, LSTM, Mamba) are given several
student configurations (a single causal layer with ``normalize="none"``, a causal softmax
layer, the ScanMixer, a 2-block causal ITNet stack); all are reported, the best marked.

The error is rel_err = ||student(x) - teacher(x)||_F / ||teacher(x)||_F on a fixed held-out
set (its own seed), evaluated at step 0 and every ``steps / 8`` steps. Beside each student:
the least-squares pointwise linear map (closed form on a separate fit set) and, implicitly,
the zero predictor (rel_err ~ 1 after the normalisation).

Writes ``recovery_<stamp>.json`` (config; per teacher, configuration and width: the curve
of (step, held-out error), the final error, parameters, wall time, the description; the
baseline error) and ``recovery_<stamp>.png`` (error vs step per teacher, one line per R,
the baseline dashed; final error vs R) to ``--out`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from typing import Dict, List, Optional

import torch
from torch import nn
from torch.nn import functional as F

from . import recovery_teachers as RT

__all__ = ["DEFAULTS", "DEFAULT_STEPS", "QUICK", "parse_args", "train_student", "run_teacher",
           "markdown_table", "plot", "main"]

# the default run (all six teachers x three widths, every causal configuration) is sized
# to finish in a few minutes on two CPU cores; --quick is a seconds-long smoke run
DEFAULTS = dict(steps=400, batch_size=32, lr=3e-3, warmup=20, test_size=256, fit_size=1024,
                evals=8)
# teachers whose students train longer at the defaults: MHA's student is cheap (~3 ms a
# step) and optimisation-limited (held-out error 0.37 after 400 steps, 0.09 after 1600)
DEFAULT_STEPS = {"mha": 1200}
QUICK = dict(steps=12, batch_size=8, lr=3e-3, warmup=2, test_size=16, fit_size=64, evals=3)


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


@torch.no_grad()
def _held_out_error(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was = model.training
    model.eval()
    e = RT.rel_err(model(x), y)
    model.train(was)
    return e


def train_student(model: nn.Module, teacher: RT.Teacher, test, *, steps: int, batch_size: int,
                  lr: float, warmup: int, evals: int, seed: int, desc: str = "",
                  progress: Optional[bool] = None) -> dict:
    """Adam (warmup + cosine decay, grad-norm clip 1) on fresh Gaussian batches (a generator
    seeded per teacher, so every student of a teacher sees the same batches); MSE to the
    normalised teacher. Returns the curve of (step, held-out rel. error), step 0 included."""
    from tqdm.auto import tqdm

    xt, yt = test
    every = max(1, steps // evals)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    wu = min(warmup, steps)

    def mult(s):
        if s < wu:
            return (s + 1) / wu
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - wu) / max(1, steps - wu))))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, mult)
    g = torch.Generator().manual_seed(RT.derived_seed(seed, "train", teacher.name))
    curve = [(0, _held_out_error(model, xt, yt))]
    t0 = time.perf_counter()
    model.train()
    bar = tqdm(range(1, steps + 1), desc=desc, leave=False,
               disable=None if progress is None else not progress)
    for step in bar:
        x = teacher.sample(batch_size, g)
        loss = F.mse_loss(model(x), teacher(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % every == 0 or step == steps:
            curve.append((step, _held_out_error(model, xt, yt)))
            bar.set_postfix(err=f"{curve[-1][1]:.3f}")
    bar.close()
    return {"curve": curve, "final_error": curve[-1][1],
            "best_error": min(e for _, e in curve), "wall_s": time.perf_counter() - t0}


def run_teacher(name: str, widths: List[int], settings: dict, seed: int, quick: bool,
                configs: Optional[List[str]] = None, progress: Optional[bool] = None,
                **teacher_options) -> dict:
    """One teacher: calibrate it, fit the linear baseline, train every student configuration
    of its family at every width."""
    t = RT.build_teacher(name, seed, quick, **teacher_options)
    g_fit = torch.Generator().manual_seed(RT.derived_seed(seed, "fit", name))
    g_test = torch.Generator().manual_seed(RT.derived_seed(seed, "test", name))
    x_fit = t.sample(settings["fit_size"], g_fit)
    t.calibrate(x_fit)
    y_fit = t(x_fit)
    x_test = t.sample(settings["test_size"], g_test)
    y_test = t(x_test)
    W, b = RT.lstsq_fit(x_fit, y_fit)
    base = RT.rel_err(RT.lstsq_apply(W, b, x_test), y_test)
    fam = RT.STUDENTS[t.family]
    configs = list(fam) if configs is None else configs
    out = {"description": t.description, "family": t.family, "steps": settings["steps"], "seq_len": t.seq_len,
           "channels": t.channels, "teacher_params": sum(p.numel() for p in t.module.parameters()),
           "baseline": {"linear_lstsq": base, "zero": RT.rel_err(torch.zeros_like(y_test), y_test)},
           "configs": {}}
    kw = {k: settings[k] for k in ("steps", "batch_size", "lr", "warmup", "evals")}
    for cfg in configs:
        if cfg not in fam:
            raise ValueError(f"teacher {name!r} has no student configuration {cfg!r}; "
                             f"choose from {list(fam)}")
        res = {}
        for R in widths:
            model, desc = RT.build_student(t, cfg, R, seed)
            r = train_student(model, t, (x_test, y_test), seed=seed, desc=f"{name}/{cfg}/R={R}",
                              progress=progress, **kw)
            res[str(R)] = {"params": _count(model), "student": desc, **r}
        out["configs"][cfg] = {"widths": res}
    final = {c: min(v["final_error"] for v in d["widths"].values())
             for c, d in out["configs"].items()}
    best = min(final, key=final.get)
    out["best_config"] = best
    out["best"] = {R: v["final_error"] for R, v in out["configs"][best]["widths"].items()}
    return out


# --------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------
def markdown_table(results: dict, widths: List[int]) -> str:
    head = "| teacher | student | " + " | ".join(f"R={R}" for R in widths) + \
        " | linear LSQ | zero | steps | params (R=max) | wall s |"
    rows = [head, "|---|---|" + "---:|" * (len(widths) + 5)]
    for tname, tr in results.items():
        for cfg, d in tr["configs"].items():
            w = d["widths"]
            mark = " *" if len(tr["configs"]) > 1 and cfg == tr["best_config"] else ""
            errs = " | ".join(f"{w[str(R)]['final_error']:.4f}" for R in widths)
            wall = sum(v["wall_s"] for v in w.values())
            rows.append(f"| {tname} | {cfg}{mark} | {errs} | {tr['baseline']['linear_lstsq']:.4f} "
                        f"| {tr['baseline']['zero']:.2f} | {tr['steps']} | {w[str(max(widths))]['params']:,} "
                        f"| {wall:.1f} |")
    return "\n".join(rows)


def plot(results: dict, widths: List[int], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results) + 1
    cols = min(4, n)
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.0 * cols, 3.3 * nrows), squeeze=False)
    axes = axes.ravel()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (tname, tr) in zip(axes, results.items()):
        best = tr["best_config"]
        for i, R in enumerate(widths):
            steps, errs = zip(*tr["configs"][best]["widths"][str(R)]["curve"])
            ax.plot(steps, errs, marker="o", ms=3, color=colors[i % len(colors)], label=f"R={R}")
        ax.axhline(tr["baseline"]["linear_lstsq"], color="k", ls="--", lw=1, label="linear LSQ")
        ax.set_title(f"{tname} ({best})" if len(tr["configs"]) > 1 else tname, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("held-out rel. error")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    ax = axes[len(results)]
    for i, (tname, tr) in enumerate(results.items()):
        ax.plot(widths, [tr["best"][str(R)] for R in widths], marker="o",
                color=colors[i % len(colors)], label=tname)
        ax.axhline(tr["baseline"]["linear_lstsq"], color=colors[i % len(colors)], ls="--", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(widths)
    ax.set_xticklabels([str(R) for R in widths])
    ax.set_xlabel("kernel width R")
    ax.set_ylabel("final held-out rel. error")
    ax.set_title("error vs R (best config; dashed: linear LSQ)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    for ax in axes[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------
def _int_list(p: argparse.ArgumentParser, s: str, what: str) -> List[int]:
    try:
        vals = [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        p.error(f"--{what} must be comma-separated integers, got {s!r}")
    if not vals:
        p.error(f"--{what} is empty")
    if any(v <= 0 for v in vals):
        p.error(f"--{what}: every width must be a positive int (> 0), got {s!r}")
    return sorted(set(vals))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m itnet_ext.experiments.recovery",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--teachers", default=",".join(RT.TEACHERS),
                   help=f"comma-separated, from {','.join(RT.TEACHERS)}")
    p.add_argument("--widths", default="4,16,32", help="kernel widths R (pair-MLP hidden size)")
    p.add_argument("--steps", type=int, default=None, help="training steps per student")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join("bench", "results"))
    p.add_argument("--quick", action="store_true", help="tiny sizes, a seconds-long run")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads during the run (default 1: on a shared "
                        "2-core machine two OpenMP threads slow down many times when "
                        "another process takes a core; the sizes are too small to gain much)")
    p.add_argument("--configs", default=None,
                   help="comma-separated student configurations for the causal teachers "
                        f"(default: all of {','.join(RT.STUDENTS['causal'])})")
    a = p.parse_args(argv)
    a.teachers = [t for t in a.teachers.split(",") if t.strip()]
    if not a.teachers:
        p.error("--teachers is empty")
    for t in a.teachers:
        if t not in RT.TEACHERS:
            p.error(f"unknown teacher {t!r}; choose from {','.join(RT.TEACHERS)}")
    a.widths = _int_list(p, a.widths, "widths")
    if a.steps is not None and a.steps < 1:
        p.error(f"--steps must be >= 1, got {a.steps}")
    if a.threads < 1:
        p.error(f"--threads must be >= 1, got {a.threads}")
    if a.configs is not None:
        a.configs = [c for c in a.configs.split(",") if c.strip()]
        for c in a.configs:
            if c not in RT.STUDENTS["causal"]:
                p.error(f"unknown configuration {c!r}; choose from "
                        f"{','.join(RT.STUDENTS['causal'])}")
    return a


def main(argv: Optional[List[str]] = None) -> dict:
    a = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(a.threads)
    try:
        return _run(a, argv)
    finally:
        torch.set_num_threads(threads)


def _run(a: argparse.Namespace, argv: Optional[List[str]]) -> dict:
    settings = dict(QUICK if a.quick else DEFAULTS)
    if a.steps is not None:
        settings["steps"] = a.steps
    t0 = time.perf_counter()
    results: Dict[str, dict] = {}
    for name in a.teachers:
        causal = RT.FAMILIES[name] == "causal"
        tt = time.perf_counter()
        st = dict(settings)
        if a.steps is None and not a.quick:
            st["steps"] = DEFAULT_STEPS.get(name, st["steps"])
        results[name] = run_teacher(name, a.widths, st, a.seed, a.quick,
                                    configs=a.configs if causal else None)
        tr = results[name]
        print(f"[{name}] best {tr['best_config']}: " +
              ", ".join(f"R={R} {e:.4f}" for R, e in tr["best"].items()) +
              f"; linear LSQ {tr['baseline']['linear_lstsq']:.4f} "
              f"({time.perf_counter() - tt:.1f} s)", flush=True)
    total = time.perf_counter() - t0

    os.makedirs(a.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    jpath = os.path.join(a.out, f"recovery_{stamp}.json")
    ppath = os.path.join(a.out, f"recovery_{stamp}.png")
    record = {"date": stamp, "argv": sys.argv[1:] if argv is None else list(argv),
              "config": {"seed": a.seed, "quick": a.quick, "teachers": a.teachers,
                         "widths": a.widths, **settings, "steps_per_teacher":
                         {n: r["steps"] for n, r in results.items()}, "optimizer": "Adam, warmup + cosine, "
                         "grad clip 1", "loss": "MSE to the normalised teacher",
                         "torch": torch.__version__, "threads": torch.get_num_threads()},
              "total_wall_s": total, "teachers": results}
    with open(jpath, "w") as f:
        json.dump(record, f, indent=1)
    plot(results, a.widths, ppath)
    record["paths"] = {"json": jpath, "png": ppath}
    print(markdown_table(results, a.widths))
    print(f"\n(* = best configuration of a teacher; errors are final held-out ||s-t||/||t||)")
    print(f"total wall time {total:.1f} s; wrote {jpath} and {ppath}")
    return record


if __name__ == "__main__":
    main()
