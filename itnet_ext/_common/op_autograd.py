"""Fake-kernel and autograd helpers of the fused ops, shared by every strategy's op.py.

The (out, lse) ops, the dense and the sparse integral transform, take their tensor arguments
first and the static ones after, and return (out, lse); their backward ops take (grad_out,
out, lse, grad_lse, *the forward's arguments) and return one gradient per differentiable
input: :func:`register_out_lse_autograd` registers that pattern once for both.
"""
import torch

from .. import _C  # noqa: F401  (loads the compiled library: the schemas the helpers register for)


def check_devices(v, named, ref: str = "v"):
    """Every given tensor on v's device (``ref`` names v in the message). The real kernels
    check this too; the fake kernel must not turn a device mix (e.g. one argument on 'meta')
    into a silent result."""
    for name, x in named:
        if x is not None and x.device != v.device:
            raise RuntimeError(f"{name}: expected a tensor on {v.device} (the device of {ref}), "
                               f"got {x.device}")


def register_no_double_backward(op: str, what: str, oracle: str) -> None:
    """A backward op's own autograd: a clear error for gradients of gradients."""
    def backward(ctx, *grads):
        raise RuntimeError(f"{op}: double backward (gradients of gradients) of the fused "
                           f"{what} is not supported; use {oracle} for it")

    torch.library.register_autograd(op, backward)


def fake_grads(v, args, grad_slots):
    """What a backward op's fake kernel returns: contiguous gradients shaped like the inputs
    (whatever their strides: the kernels return contiguous ones), empty for absent inputs."""
    return tuple(args[slot].new_empty(args[slot].shape) if args[slot] is not None
                 else v.new_empty((0,)) for slot in grad_slots)


def register_out_lse_autograd(fwd: str, bwd: str, *, tensor_args, grad_names, softmax_index,
                              what: str) -> None:
    """register_autograd for ``fwd`` (via ``bwd``) and a clear error for the double backward.

    tensor_args: the names of the forward's tensor arguments, in order; grad_names: the
    differentiable ones, in ``bwd``'s output order; softmax_index: position of the ``softmax``
    flag among the static arguments (``none`` mode has no lse gradient); what: the op, for
    the error message."""
    n = len(tensor_args)
    grad_slots = tuple(tensor_args.index(name) for name in grad_names)
    bwd_op = getattr(torch.ops.itnet, bwd.split("::")[1])

    def setup_context(ctx, inputs, output):
        out, lse = output
        ctx.save_for_backward(*inputs[:n], out, lse)
        ctx.static_args = inputs[n:]

    def backward(ctx, grad_out, grad_lse):
        saved = ctx.saved_tensors
        tensors, out, lse = saved[:n], saved[n], saved[n + 1]
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        if not ctx.static_args[softmax_index]:
            grad_lse = None
        grads = bwd_op(grad_out, out, lse, grad_lse, *tensors, *ctx.static_args)
        result = [None] * (n + len(ctx.static_args))
        for slot, g in zip(grad_slots, grads):
            if tensors[slot] is not None and ctx.needs_input_grad[slot]:
                result[slot] = g
        return tuple(result)

    torch.library.register_autograd(fwd, backward, setup_context=setup_context)
    register_no_double_backward(bwd, what, "itnet_ext.reference")

