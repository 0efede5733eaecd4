"""itnet_ext: ITNet's learnable integral transform as a fused PyTorch operator."""
import torch  # noqa: F401  (must be imported before the compiled extension)

from . import reference  # noqa: F401
from . import functional  # noqa: F401
from . import recurrence  # noqa: F401
from .nn import IntegralTransform  # noqa: F401,E402
from . import lowrank  # noqa: F401,E402
