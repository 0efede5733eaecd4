"""Side-by-side speed and memory benchmark: ``python -m itnet_ext.bench``.

In one run, forward (no_grad) and forward+backward, on the same device:

- ``attn``    fused op, content term only          vs ``F.scaled_dot_product_attention``
- ``mlp-R32`` fused op, content + MLP term (R=32)  vs ``itnet_ext.reference`` and vs SDPA
- ``conv1d``  ``IntegralTransform.from_conv1d(conv)`` vs ``F.conv1d`` (64 -> 64 channels, k=5, 'same')
- ``--big`` sizes (default N=8192): the fused op alone, ``attn`` and ``mlp-R32``

Shapes: B=1, H=8, Dh=64, M=N.  Time = median of the timed repeats after one
warmup call (fewer repeats for slow calls, see ``--budget-s``).  Peak memory =
peak *extra* memory of one call above what was resident before it (inputs
excluded, outputs and gradients included); on CPU the kernel's exact
high-water mark of the process RSS (``VmHWM`` after resetting it through
``/proc/self/clear_refs`` and ``malloc_trim``), on CUDA
``torch.cuda.max_memory_allocated``.  See ``bench/README.md``.

Prints a table and a summary of the project's targets, writes JSON (default
``bench/results/<device>_<date>_<time>.json``).

``--cuda`` runs the CUDA section instead (``itnet_ext/bench/cuda.py``): float16 /
bfloat16 tensor-core kernels vs the SDPA flash backend and MLP mode vs attention-only
mode, B=4, H=16, in TFLOP/s; JSON ``bench/results/cuda_<card>_<date>_<time>.json``.
"""
from __future__ import annotations

from .cli import build_parser, main, run  # noqa: F401
from .report import format_table, write_json  # noqa: F401

__all__ = ["build_parser", "format_table", "main", "run", "write_json"]
