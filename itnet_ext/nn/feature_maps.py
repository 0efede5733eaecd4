"""Public path kept: the implementation is :mod:`itnet_ext.lowrank.feature_maps`."""
from ..lowrank.feature_maps import *  # noqa: F401,F403
from ..lowrank.feature_maps import __all__  # noqa: F401
