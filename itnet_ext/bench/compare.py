"""The regression gate: ``python -m itnet_ext.bench [section] --compare OLD.json``.

Every section's JSON carries ratios between the fused op and a baseline measured in the
same run. Absolute times move with the machine's load; those ratios move much less, so
they are what the gate compares. A ratio is found by its key and read in its direction:

- ``ratio`` (fused / baseline time): lower is better;
- ``speedup*``, ``memory_ratio``, ``*_over_*`` and the entries of a ``vs_*`` dict
  (baseline / fused): higher is better.

A ratio's name is its path in the JSON, with each list element named by its own
identifying fields (``mode``, ``N``, ``T``, ``pass``, ``baseline``, ...), so that two runs
of different sizes compare on the sizes they share. A ratio more than ``tolerance``
(default 15%) worse than the stored run is a regression; ratios present in one run only
are listed, not flagged.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Tuple

__all__ = ["ratios", "compare", "format_comparison", "load"]

# fields that name a list element (the first ones found, in this order)
_ID_FIELDS = ("section", "mode", "impl", "name", "baseline", "peer", "scaling", "N", "T", "P",
              "R", "S", "Dh", "dtype", "pass")
_LOWER = ("ratio",)


def _direction(key: str):
    """True: higher is better, False: lower is better, None: not a ratio."""
    if key in _LOWER:
        return False
    if key.startswith("speedup") or key == "memory_ratio" or "_over_" in key:
        return True
    return None


def _element_name(x, i: int) -> str:
    if isinstance(x, dict):
        parts = [f"{f}={x[f]}" for f in _ID_FIELDS
                 if f in x and isinstance(x[f], (str, int)) and not isinstance(x[f], bool)]
        if parts:
            return "[" + " ".join(parts) + "]"
    return f"[{i}]"


def ratios(result) -> Dict[str, Tuple[float, bool]]:
    """``{name: (value, higher_is_better)}`` of every ratio in a bench result."""
    out: Dict[str, Tuple[float, bool]] = {}

    def walk(x, path, vs=False):
        if isinstance(x, dict):
            for k, v in x.items():
                if k in ("meta", "measurements", "config", "argv"):
                    continue
                num = isinstance(v, (int, float)) and not isinstance(v, bool)
                d = True if vs else _direction(k)
                if num and d is not None and v == v and v not in (float("inf"), float("-inf")):
                    out[f"{path}/{k}"] = (float(v), d)
                elif isinstance(v, (dict, list)):
                    walk(v, f"{path}/{k}", vs=k.startswith("vs_"))
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, path + _element_name(v, i))
    walk(result, "")
    return out


def compare(old, new, tolerance: float = 0.15) -> dict:
    """Each ratio of ``new`` against the same one of ``old``. ``change``: the factor by
    which it got worse (> 1) or better (< 1); a regression has change > 1 + tolerance."""
    if not (0 <= tolerance < 10):
        raise ValueError(f"tolerance: expected a fraction in [0, 10), got {tolerance!r}")
    a, b = ratios(old), ratios(new)
    rows = []
    for name in sorted(set(a) & set(b)):
        (va, higher), (vb, _) = a[name], b[name]
        if va <= 0 or vb <= 0:
            continue
        change = va / vb if higher else vb / va          # > 1: worse
        rows.append({"name": name, "old": va, "new": vb, "higher_is_better": higher,
                     "change": change, "regression": change > 1 + tolerance})
    return {"tolerance": tolerance, "rows": rows,
            "regressions": [r["name"] for r in rows if r["regression"]],
            "only_old": sorted(set(a) - set(b)), "only_new": sorted(set(b) - set(a))}


def format_comparison(cmp: dict, old_name: str = "old") -> str:
    tol = cmp["tolerance"]
    lines = [f"regression gate against {old_name}: {len(cmp['rows'])} shared ratios, "
             f"{len(cmp['regressions'])} more than {tol:.0%} worse"]
    if not cmp["rows"]:
        lines.append("  (no ratio in common: different sections or sizes?)")
    w = max([len(r["name"]) for r in cmp["rows"]] + [10])
    for r in cmp["rows"]:
        flag = "WORSE " if r["regression"] else "      "
        arrow = "higher" if r["higher_is_better"] else "lower"
        lines.append(f"  {flag}{r['name']:{w}s} {r['old']:10.3f} -> {r['new']:10.3f} "
                     f"({arrow} is better; {r['change']:.2f}x as bad)")
    for key, label in (("only_old", "only in the stored run"), ("only_new", "only in this run")):
        if cmp[key]:
            lines.append(f"  {len(cmp[key])} ratios {label}, e.g. {cmp[key][0]}")
    return "\n".join(lines)


def load(path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--compare: no such file {str(p)!r} (a JSON written by "
                         f"python -m itnet_ext.bench)")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--compare: {str(p)!r} is not JSON ({e})") from None
