"""Public path kept: the implementation is :mod:`itnet_ext.sparse.neighbors`."""
from ..sparse.neighbors import *  # noqa: F401,F403
from ..sparse.neighbors import __all__  # noqa: F401
