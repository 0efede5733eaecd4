"""Write OUTDIR/summary.md for scripts/gpu_check.sh from what its steps left in OUTDIR.

    python3 scripts/gpu_check_summary.py OUTDIR

Reads (each may be missing): env.kv (key=value lines), steps.tsv (name, status, seconds,
note), tests.xml (pytest junit), tests.log, memcheck.log, racecheck.log, bench.log.
Standard library only, and it never imports itnet_ext or torch: it must work when the build
failed.
"""
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def read(path):
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def env_kv(out):
    kv = {}
    for line in (read(out / "env.kv") or "").splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            kv[k.strip()] = v.strip()
    return kv


def steps(out):
    rows = []
    for line in (read(out / "steps.tsv") or "").splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            rows.append((parts[0], parts[1], parts[2], parts[3] if len(parts) > 3 else ""))
    return rows


def junit(out, max_failures=8):
    """(counts dict, [(test id, message)]) or (None, []) without a readable junit file."""
    text = read(out / "tests.xml")
    if not text:
        return None, []
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return None, []
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    c = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "time": 0.0}
    fails = []
    for s in suites:
        for k in ("tests", "failures", "errors", "skipped"):
            c[k] += int(s.get(k, 0))
        c["time"] += float(s.get("time", 0.0))
        for case in s.iter("testcase"):
            for tag in ("failure", "error"):
                el = case.find(tag)
                if el is not None and len(fails) < max_failures:
                    name = f"{case.get('classname', '')}::{case.get('name', '')}"
                    msg = el.get("message") or ""
                    e_lines = [ln[2:].strip() for ln in (el.text or "").splitlines()
                               if ln.startswith("E ")]
                    if e_lines and e_lines[-1] not in msg:
                        msg = f"{msg} | {e_lines[-1]}" if msg else e_lines[-1]
                    msg = msg.replace("\n", " ")
                    fails.append((name, msg[:500] + ("..." if len(msg) > 500 else "")))
    c["passed"] = c["tests"] - c["failures"] - c["errors"] - c["skipped"]
    return c, fails


def sanitizer(out, name):
    text = read(out / f"{name}.log")
    if text is None:
        return None
    found = re.findall(r"=+ ERROR SUMMARY: .*", text)
    race = re.findall(r"=+ RACECHECK SUMMARY: .*", text)
    cases = re.findall(r"sanitize_cases: .*", text)
    lines = [found[-1].lstrip("= ")] if found else ["no ERROR SUMMARY line (see the log)"]
    lines += [race[-1].lstrip("= ")] if race else []
    lines += cases[-1:]
    all_lines = text.splitlines()
    for i, ln in enumerate(all_lines):
        if re.match(r"=+ +(Invalid|Race|Error|Warning|Uninitialized|Barrier|Program hit)", ln):
            where = all_lines[i + 1].strip("= ").strip() if i + 1 < len(all_lines) else ""
            lines.append(f"first report: {ln.strip('= ').strip()} {where}".strip())
            break
    return "; ".join(lines)


def bench_table(out):
    text = read(out / "bench.log")
    if text is None:
        return None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("itnet_ext.bench --cuda") or line.startswith("CUDA section skipped"):
            return "\n".join(ln for ln in lines[i:] if not ln.startswith("wrote "))
    return None


def main(out):
    out = Path(out)
    kv = env_kv(out)
    md = ["# GPU check", ""]
    md.append("| | |")
    md.append("|---|---|")
    for key, label in (("gpu_name", "card"), ("driver", "driver"), ("compute_cap", "capability"),
                       ("torch", "torch"), ("torch_cuda", "torch CUDA"), ("nvcc", "nvcc"),
                       ("python", "python"), ("date_utc", "date (UTC)"),
                       ("git_commit", "git commit"), ("nproc", "CPU cores"),
                       ("arch_list", "TORCH_CUDA_ARCH_LIST"), ("cuda_home", "CUDA_HOME"),
                       ("cuda_kernels_compiled", "cuda_kernels_compiled()")):
        md.append(f"| {label} | {kv.get(key, '?') or '?'} |")
    md += ["", "## Steps", "", "| step | status | seconds | note |", "|---|---|---|---|"]
    total = 0.0
    for name, status, secs, note in steps(out):
        md.append(f"| {name} | {status} | {secs} | {note} |")
        try:
            total += float(secs)
        except ValueError:
            pass
    md.append(f"| total | | {total:.0f} | |")

    md += ["", "## Tests", ""]
    counts, fails = junit(out)
    if counts is None:
        tail = [ln for ln in (read(out / "tests.log") or "").splitlines() if ln.strip()][-3:]
        md.append("no junit file (pytest missing, killed by the timeout, or not run); "
                  "last lines of tests.log:")
        md += ["", "```", *tail, "```"]
    else:
        md.append(f"{counts['passed']} passed, {counts['failures']} failed, {counts['errors']} "
                  f"errors, {counts['skipped']} skipped of {counts['tests']} "
                  f"({counts['time']:.0f} s)")
        if fails:
            md += ["", "First failures:", ""]
            md += [f"- `{n}`: {m}" for n, m in fails]

    md += ["", "## compute-sanitizer", ""]
    for name in ("memcheck", "racecheck"):
        s = sanitizer(out, name)
        md.append(f"- {name}: {s if s is not None else 'not run'}")

    md += ["", "## Benchmark (python -m itnet_ext.bench --cuda)", ""]
    table = bench_table(out)
    md += ["```", table, "```"] if table else ["not run or no table (see bench.log)"]
    scan = (read(out / "bench_scan.log") or "").strip().splitlines()
    if scan:
        md += ["", "## Decay-scan benchmark (python -m itnet_ext.bench --scan --device cuda)", "",
               "```", *scan[-40:], "```"]
    sparse = (read(out / "bench_sparse.log") or "").strip().splitlines()
    if sparse:
        md += ["", "## Sparse-op GNO benchmark (python -m itnet_ext.bench --sparse --device cuda "
               "--sparse-part gno)", "", "```", *sparse[-30:], "```"]
    lowrank = (read(out / "bench_lowrank.log") or "").strip().splitlines()
    if lowrank:
        md += ["", "## Low-rank benchmark (python -m itnet_ext.bench --lowrank --device cuda)", "",
               "```", *lowrank[-40:], "```"]
    text = "\n".join(md) + "\n"
    (out / "summary.md").write_text(text)
    return text


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: gpu_check_summary.py OUTDIR")
    sys.stdout.write(main(sys.argv[1]))
