"""Private pieces shared by the strategy packages (itnet_ext.dense, .sparse, .scan, .lowrank)
and the layers: argument checks (checks, kernel_args), the kernels' code tables (names),
fake-kernel / autograd helpers (op_autograd), the oracles' helpers (naive) and the layers'
input handling (layer_inputs). Nothing here imports a strategy or a layer.
"""
