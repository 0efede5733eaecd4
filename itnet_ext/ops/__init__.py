"""Typed wrappers, fake kernels and autograd of the compiled itnet ops.

One module per evaluation strategy; importing this package loads the
compiled library (itnet_ext._C), whose static initializers register the
schemas and the CPU / CUDA kernels under torch.ops.itnet.
"""
from . import dense  # noqa: F401
from . import scan  # noqa: F401
from . import sparse  # noqa: F401
from . import lowrank  # noqa: F401
