"""The low-rank op: fake (meta) kernels and autograd for torch.ops.itnet.lowrank_*.

    lowrank_fwd(q, k, v, projection, feature_map, softmax, eps) -> out
    lowrank_bwd(grad_out, q, k, v, projection, feature_map, softmax, eps) -> (dq, dk, dv)
    lowrank_features(x, projection, feature_map, stabilize) -> phi
    lowrank_features_bwd(grad_phi, x, projection, feature_map, stabilize) -> dx

The backward recomputes the features and the key sums S, z from the inputs, so autograd
saves only the inputs. The projection (FAVOR+'s random matrix, a buffer) gets no gradient.
"""
import torch

from .. import _C  # noqa: F401  (registers the ops)
from ._out_lse import check_devices

# csrc/lowrank/params.h: FeatureMap
FEATURE_MAP_CODES = {"identity": 0, "elu+1": 1, "relu": 2, "favor+": 3}
# csrc/lowrank/params.h: Stabilizer
STABILIZE_NONE, STABILIZE_ROW, STABILIZE_SLICE = 0, 1, 2


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float16 / bfloat16 / float32, float64 for float64 (the kernels' dtype)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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


def _no_double_backward(name):
    def backward(ctx, *grads):
        raise RuntimeError(f"itnet::{name}: double backward (gradients of gradients) of the "
                           f"fused low-rank transform is not supported; use "
                           f"itnet_ext.reference.lowrank_integral_transform for it")
    return backward


torch.library.register_autograd("itnet::lowrank_fwd", _fwd_backward, setup_context=_fwd_setup)
torch.library.register_autograd("itnet::lowrank_bwd", _no_double_backward("lowrank_bwd"))
torch.library.register_autograd("itnet::lowrank_features", _features_backward,
                                setup_context=_features_setup)
torch.library.register_autograd("itnet::lowrank_features_bwd",
                                _no_double_backward("lowrank_features_bwd"))
