"""Timers and peak-memory meters of ``python -m itnet_ext.bench``.

``_CpuPeakMeter`` / ``_CudaPeakMeter`` measure the peak extra memory of one
call; ``_Runner`` times a call (one warmup, then timed repeats).
"""
from __future__ import annotations

import ctypes
import gc
import math
import os
import statistics
import threading
import time

import torch

MIB = float(1 << 20)
GIB = float(1 << 30)


# ======================================================================================
# memory meters
# ======================================================================================
class _CpuPeakMeter:
    """Peak extra resident memory of one call on CPU.

    Preferred ("vmhwm"): release free heap pages (``malloc_trim(0)``), reset the
    kernel's RSS high-water mark (write ``5`` to ``/proc/self/clear_refs``),
    read VmRSS, run the call, read VmHWM: exact, no sampling, sees every
    allocation (torch tensors, kernel scratch, autograd buffers).
    Fallback ("sampled"): a thread reads ``/proc/self/statm`` every ~0.5 ms
    during the call (can miss spikes shorter than that).
    """

    def __init__(self):
        try:
            self._libc = ctypes.CDLL("libc.so.6")
        except OSError:
            self._libc = None
        self.method = "none"
        try:
            self._reset_hwm()
            self._status()
            self.method = "vmhwm"
        except OSError:
            if os.path.exists("/proc/self/statm"):
                self.method = "sampled"
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    description = property(lambda self: {
        "vmhwm": "peak RSS (VmHWM, reset via /proc/self/clear_refs after malloc_trim) minus RSS before the call",
        "sampled": "peak of RSS sampled every 0.5 ms (/proc/self/statm) minus RSS before the call",
        "none": "not measured",
    }[self.method])

    @staticmethod
    def _reset_hwm():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    @staticmethod
    def _status():
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, val = line.split(":")
                    out[key] = int(val.split()[0]) * 1024
        return out["VmRSS"], out["VmHWM"]

    def _rss(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def measure(self, fn):
        """Run ``fn`` once; return (seconds, peak extra bytes or None)."""
        gc.collect()
        if self._libc is not None:
            self._libc.malloc_trim(0)
        if self.method == "vmhwm":
            self._reset_hwm()
            base, _ = self._status()
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            _, hwm = self._status()
            return dt, max(0, hwm - base)
        if self.method == "sampled":
            base = self._rss()
            peak = [base]
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    peak[0] = max(peak[0], self._rss())
                    time.sleep(0.0005)

            th = threading.Thread(target=sample, daemon=True)
            th.start()
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            stop.set()
            th.join()
            return dt, max(0, max(peak[0], self._rss()) - base)
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0, None


class _CudaPeakMeter:
    method = "cuda_max_memory_allocated"
    description = "torch.cuda.max_memory_allocated() during the call minus memory_allocated() before it"

    def __init__(self, device):
        self.device = device

    def measure(self, fn):
        gc.collect()
        torch.cuda.synchronize(self.device)
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        return dt, max(0, torch.cuda.max_memory_allocated(self.device) - base)


# ======================================================================================
# timing
# ======================================================================================
class _Runner:
    def __init__(self, device, repeats, budget_s, log, min_repeat_s=0.02):
        self.min_repeat_s = min_repeat_s
        self.device = device
        self.repeats = repeats
        self.budget_s = budget_s
        self.log = log
        self.meter = _CudaPeakMeter(device) if device.type == "cuda" else _CpuPeakMeter()

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def measure(self, fn, reset):
        """One warmup call (memory measured on it), then timed repeats (no meter running).

        ``reset`` runs before every call, outside the timed / metered window.
        Calls shorter than ``min_repeat_s`` (20 ms) are looped inside one repeat (time per call reported).
        Repeats are capped so the timed part takes about ``budget_s`` (at least 1).
        """
        reset()
        self._sync()
        warm_s, peak = self.meter.measure(fn)
        repeats = max(1, min(self.repeats, int(self.budget_s // max(warm_s, 1e-9))))
        mr = self.min_repeat_s
        inner = 1 if warm_s >= mr else min(1000, max(1, math.ceil(mr / max(warm_s, 1e-6))))
        times = []
        for _ in range(repeats):
            total = 0.0
            for _ in range(inner):
                reset()
                self._sync()
                t0 = time.perf_counter()
                fn()
                self._sync()
                total += time.perf_counter() - t0
            times.append(total / inner)
        reset()
        return {
            "ms": statistics.median(times) * 1e3,
            "min_ms": min(times) * 1e3,
            "times_ms": [x * 1e3 for x in times],
            "repeats": repeats,
            "inner_loops": inner,
            "warmup_ms": warm_s * 1e3,
            "peak_extra_mb": None if peak is None else peak / MIB,
        }
