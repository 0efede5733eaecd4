"""Public path kept: the implementation is :mod:`itnet_ext.sparse.samplers`."""
from ..sparse.samplers import *  # noqa: F401,F403
from ..sparse.samplers import __all__  # noqa: F401
