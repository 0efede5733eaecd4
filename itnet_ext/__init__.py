"""itnet_ext: ITNet's learnable integral transform as a fused PyTorch operator."""
import torch  # noqa: F401  (must be imported before the compiled extension)

# one package per strategy (op, fused entry, oracle, evaluator), then the layers on top
from . import dense, lowrank, scan, sparse  # noqa: F401,E402
from . import functional, reference  # noqa: F401,E402  (every strategy's entries / oracles)
from .nn import IntegralTransform  # noqa: F401,E402
from . import recurrence  # noqa: F401,E402
from . import models  # noqa: F401,E402  (ITNet blocks, stacks and encoders on top of the layers)
