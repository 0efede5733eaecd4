"""The device emulator: itnet_ext's CUDA kernels run on the CPU (docs/design.md section 7).

A build with ``ITNET_EMULATE=1`` adds the library ``itnet_ext._C_emu``: every CUDA kernel
compiled by the host compiler against a runtime that executes a grid block by block, each
thread of a block a cooperative fiber. Its operators are ``torch.ops.itnet_emu.*``, with the
schemas of ``torch.ops.itnet.*``, on CPU tensors. Within :class:`emulate_cuda`, every call of
an ``itnet`` operator (the layers, the functional API, autograd's backward ops) runs there::

    from itnet_ext import emulate
    with emulate.emulate_cuda():
        out = itnet_ext.functional.sparse_integral_transform(...)   # CPU tensors, CUDA kernels

What the emulator checks, and what only a GPU can, is in docs/design.md section 7.
"""
from __future__ import annotations

import contextlib
import importlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["available", "load", "configure", "settings", "use", "instrumented", "stats",
           "reset_stats", "control", "control_names", "emulate_cuda", "active"]

ORDERS = ("forward", "reverse", "shuffle")


def available() -> bool:
    """Whether this build has the emulated library (``ITNET_EMULATE=1`` at build time)."""
    try:
        load()
    except ImportError:
        return False
    return True


def load() -> None:
    """Loads ``itnet_ext._C_emu`` (registers ``torch.ops.itnet_emu``); ImportError with the
    build command when the build has no emulated library."""
    try:
        importlib.import_module("itnet_ext._C_emu")
    except ImportError as e:
        raise ImportError("itnet_ext was built without the device emulator: rebuild with "
                          "ITNET_EMULATE=1 pip install --no-build-isolation -e .") from e


def configure(order: str = "forward", seed: int = 0, race_check: bool = True,
              poison_shared: bool = True) -> None:
    """Settings of later launches. order: the order in which the threads of a block run
    between barriers ("forward", "reverse", "shuffle": per block, seeded by ``seed``);
    race_check: the shared-memory race and bounds checks (in the instrumented build);
    poison_shared: fill shared memory with 0xFF bytes (NaN) at every block start."""
    load()
    if order not in ORDERS:
        raise ValueError(f"order: expected one of {ORDERS}, got {order!r}")
    torch.ops.itnet_emu.emu_configure(order, int(seed), bool(race_check), bool(poison_shared))


def settings() -> dict:
    """The current settings (see :func:`configure`)."""
    load()
    order, seed, race, poison = torch.ops.itnet_emu.emu_settings()
    return {"order": order, "seed": seed, "race_check": race, "poison_shared": poison}


@contextlib.contextmanager
def use(**changes):
    """:func:`configure` for a ``with`` block, the previous settings restored after it."""
    before = settings()
    configure(**{**before, **changes})
    try:
        yield
    finally:
        configure(**before)


def instrumented() -> bool:
    """Whether the kernels were compiled with the access instrumentation that the race and
    shared-bounds checks need (False in the ASan build of ``ITNET_SANITIZE=1``)."""
    load()
    return bool(torch.ops.itnet_emu.emu_instrumented())


def stats() -> dict:
    """Counters since :func:`reset_stats`: launches, blocks, fiber switches and the shared-
    memory accesses the checks saw."""
    load()
    launches, blocks, switches, accesses = torch.ops.itnet_emu.emu_stats()
    return {"launches": launches, "blocks": blocks, "switches": switches,
            "shared_accesses": accesses}


def reset_stats() -> None:
    load()
    torch.ops.itnet_emu.emu_reset_stats()


def control_names() -> list:
    """The control kernels of csrc/emulate/controls.cu."""
    load()
    return list(torch.ops.itnet_emu.emu_control_names())


def control(name: str) -> torch.Tensor:
    """Runs a control kernel (csrc/emulate/controls.cu) and returns what it wrote."""
    load()
    return torch.ops.itnet_emu.emu_control(name, 0)


def active() -> bool:
    """Whether an :class:`emulate_cuda` mode is on (the itnet operators then run their CUDA
    kernels on CPU tensors: checks of what CPU tensors may hold defer to them)."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
    return any(isinstance(m, emulate_cuda) for m in _get_current_dispatch_mode_stack())


class emulate_cuda(TorchDispatchMode):
    """Within it, a call of any ``torch.ops.itnet`` operator runs its ``torch.ops.itnet_emu``
    twin: the CUDA entry point and kernels, emulated, on CPU tensors. Autograd runs above
    it, so the backward ops are redirected too. Other operators run as usual."""

    def __init__(self):
        super().__init__()
        load()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "itnet":
            name = func._schema.name.split("::", 1)[1]
            func = getattr(getattr(torch.ops.itnet_emu, name), func._overloadname)
        return func(*args, **kwargs)
