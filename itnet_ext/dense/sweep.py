"""The flash configuration sweep: the float16 / bfloat16 CUDA kernels of the dense op with other
tile shapes, warp counts, load stages and packed MLP math than the defaults
(``csrc/dense/flash/sweep.h``), selected at run time for benchmarks.

The sweep is compiled only on request (``ITNET_FLASH_SWEEP=all pip install
--no-build-isolation -e .``, or file-name patterns, see setup.py). A forward configuration is
named ``b{rows}x{keys}_w{warps}_s{stages}[_packed]``, a backward one ``w{warps}_t{tile}``; each
has instances for head dims up to 64 and 128 and for both dtypes, with the pair MLP compiled for
the ``gelu`` activation only. ``python -m itnet_ext.bench.flash_sweep`` times them all against
SDPA's flash backend.

The selection is process-wide (like ``torch.backends`` flags): use :func:`use` around the calls
to measure, not in concurrent code.
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["configs", "current", "use"]


def _ops(emulated):
    if emulated:
        from .. import emulate
        emulate.load()
        return torch.ops.itnet_emu
    return torch.ops.itnet


def configs(backward: bool = False, emulated: bool = False) -> list:
    """Names of the compiled forward (or backward) configurations, sorted; [] without the sweep.
    ``emulated``: of the device emulator's library (itnet_ext.emulate) instead."""
    return sorted(_ops(emulated).flash_configs(bool(backward)))


def current(emulated: bool = False) -> tuple:
    """The selected (forward, backward) configuration names; "" is the default."""
    fwd, bwd = _ops(emulated).flash_config()
    return fwd, bwd


@contextlib.contextmanager
def use(fwd: str = "", bwd: str = "", emulated: bool = False):
    """Within the block, the flash kernels run configuration ``fwd`` (forward) and ``bwd``
    (backward); "" = the default. A name that was not compiled raises; calls whose head dim
    (above 128) or activation (not gelu) the configuration has no instance for raise too."""
    ops = _ops(emulated)
    prev = tuple(ops.flash_config())
    ops.set_flash_config(fwd, bwd)
    try:
        yield
    finally:
        ops.set_flash_config(*prev)
