"""Layers: the general :class:`IntegralTransform` and exact converters."""
from . import convert
from .convert import *  # noqa: F401,F403  (the converters, listed once in convert.__all__)
from .transform import IntegralTransform

__all__ = ["IntegralTransform", *convert.__all__]
