"""Input checks shared by the recurrent layers: a wrong shape, dtype or device is reported
with the argument's name and the layer's expectation, before it reaches a matmul or the scan
(whose messages would name internal tensors)."""
from __future__ import annotations

import torch
from torch import Tensor


def _got(x) -> str:
    if not isinstance(x, Tensor):
        return type(x).__name__
    return f"shape {tuple(x.shape)}, dtype {x.dtype}, on {x.device}"


def check_input(name: str, x, channels: int, like: Tensor, *, step: bool = False,
                what: str = "d_model") -> None:
    """``x``: (B, T, channels) (``step``: (B, channels)) in the dtype and on the device of the
    layer's parameter ``like``; ``what`` names the channel count (the constructor argument).
    The dtype is not checked under autocast (the layers' linear maps run in the autocast dtype
    there)."""
    layout = f"(B, {channels})" if step else f"(B, T, {channels})"
    if not isinstance(x, Tensor) or x.dim() != (2 if step else 3) or x.shape[-1] != channels:
        raise ValueError(f"{name}: expected a {layout} tensor ({channels} = {what}), got "
                         f"{_got(x)}")
    if x.device != like.device:
        raise ValueError(f"{name}: expected a tensor on {like.device} (the layer's device), got "
                         f"{x.device}")
    if x.dtype != like.dtype and not torch.is_autocast_enabled(x.device.type):
        raise ValueError(f"{name}: expected dtype {like.dtype} (the layer's parameters), got "
                         f"{x.dtype}")


def check_state(name: str, s, shape: tuple, like: Tensor, *, complex_ok: bool = False) -> None:
    """A state tensor of exactly ``shape`` on the layer's device, floating (or complex)."""
    ok_kind = isinstance(s, Tensor) and (s.is_floating_point() or (complex_ok and s.is_complex()))
    if not ok_kind or tuple(s.shape) != tuple(shape):
        raise ValueError(f"{name}: expected a tensor of shape {tuple(shape)}, got {_got(s)}")
    if s.device != like.device:
        raise ValueError(f"{name}: expected a tensor on {like.device} (the layer's device), got "
                         f"{s.device}")
