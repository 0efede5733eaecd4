"""The low-rank op: fake (meta) kernels and autograd for torch.ops.itnet.lowrank_*.

    lowrank_fwd(q, k, v, projection, feature_map, softmax, eps) -> out
    lowrank_bwd(grad_out, q, k, v, projection, feature_map, softmax, eps) -> (dq, dk, dv)
    lowrank_features(x, projection, feature_map, stabilize) -> phi
    lowrank_features_bwd(grad_phi, x, projection, feature_map, stabilize) -> dx

The backward recomputes the features and the key sums S, z from the inputs, so autograd
saves only the inputs. The projection (FAVOR+'s random matrix, a buffer) gets no gradient.
"""
import torch

from .._common.checks import compute_dtype
from .._common.names import FEATURE_MAPS, STABILIZERS, codes
from .._common.op_autograd import check_devices, register_no_double_backward

# the kernels' codes, from the compiled table (csrc/lowrank/params.h)
FEATURE_MAP_CODES = codes(FEATURE_MAPS)
_STAB = codes(STABILIZERS)
STABILIZE_NONE, STABILIZE_ROW, STABILIZE_SLICE = _STAB["none"], _STAB["row"], _STAB["slice"]


def _num_features(x, projection):
    return projection.shape[0] if projection is not None else x.shape[-1]


@torch.library.register_fake("itnet::lowrank_fwd")
def _fwd_fake(q, k, v, projection, feature_map, softmax, eps):
    check_devices(v, zip(("q", "k", "v", "projection"), (q, k, v, projection)))
    return v.new_empty((v.shape[0], v.shape[1], q.shape[2], v.shape[3]))


@torch.library.register_fake("itnet::lowrank_bwd")
def _bwd_fake(grad_out, q, k, v, projection, feature_map, softmax, eps):
    check_devices(v, zip(("grad_out", "q", "k", "v", "projection"),
                         (grad_out, q, k, v, projection)))
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


@torch.library.register_fake("itnet::lowrank_features")
def _features_fake(x, projection, feature_map, stabilize):
    check_devices(x, (("projection", projection),))
    return x.new_empty((*x.shape[:-1], _num_features(x, projection)),
                       dtype=compute_dtype(x.dtype))


@torch.library.register_fake("itnet::lowrank_features_bwd")
def _features_bwd_fake(grad_phi, x, projection, feature_map, stabilize):
    check_devices(x, (("grad_phi", grad_phi), ("projection", projection)))
    return x.new_empty(x.shape)


def _fwd_setup(ctx, inputs, output):
    q, k, v, projection, *static = inputs
    ctx.save_for_backward(q, k, v, projection)
    ctx.static = static


def _fwd_backward(ctx, grad_out):
    q, k, v, projection = ctx.saved_tensors
    dq, dk, dv = torch.ops.itnet.lowrank_bwd(grad_out, q, k, v, projection, *ctx.static)
    need = ctx.needs_input_grad
    return (dq if need[0] else None, dk if need[1] else None, dv if need[2] else None,
            None, None, None, None)


def _features_setup(ctx, inputs, output):
    x, projection, *static = inputs
    ctx.save_for_backward(x, projection)
    ctx.static = static


def _features_backward(ctx, grad_phi):
    x, projection = ctx.saved_tensors
    dx = torch.ops.itnet.lowrank_features_bwd(grad_phi, x, projection, *ctx.static)
    return dx if ctx.needs_input_grad[0] else None, None, None, None


torch.library.register_autograd("itnet::lowrank_fwd", _fwd_backward, setup_context=_fwd_setup)
torch.library.register_autograd("itnet::lowrank_features", _features_backward,
                                setup_context=_features_setup)
for _bwd in ("itnet::lowrank_bwd", "itnet::lowrank_features_bwd"):
    register_no_double_backward(_bwd, "low-rank transform",
                                "itnet_ext.reference.lowrank_integral_transform")
