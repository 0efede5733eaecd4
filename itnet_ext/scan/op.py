"""The decay-scan op: fake (meta) kernels and autograd for torch.ops.itnet.decay_scan_*.

Argument order of both ops (see csrc/ops.cpp), after the backward's two cotangents:
    x, log_decay, dt, A, phi, psi, skip, initial_state
then decay_scan_fwd's `checkpoint` flag / decay_scan_bwd's `checkpoints` tensor.
log_decay is 4-D (B|1, T|1, D, Rk|1) or None with the factored pair (dt, A);
phi / psi are (B, T, G, Rk). itnet_ext.functional.decay_scan normalizes the
public forms to these.
"""
import torch

from .._common.op_autograd import check_devices, register_no_double_backward

_ARGS = ("x", "log_decay", "dt", "A", "phi", "psi", "skip", "initial_state")
CKPT_EVERY = 64  # csrc/scan/params.h: kCkptEvery


@torch.library.register_fake("itnet::decay_scan_fwd")
def _fwd_fake(x, log_decay, dt, A, phi, psi, skip, initial_state, checkpoint=False):
    check_devices(x, zip(_ARGS, (x, log_decay, dt, A, phi, psi, skip, initial_state)), "x")
    B, T, D = x.shape
    Rk = phi.shape[-1]
    # checkpoints: the state before every 64th step, CPU only (CUDA keeps its own)
    ck = ((B, D, (T + CKPT_EVERY - 1) // CKPT_EVERY, Rk)
          if checkpoint and x.device.type == "cpu" else (0,))
    return x.new_empty((B, T, D)), x.new_empty((B, D, Rk)), x.new_empty(ck)


@torch.library.register_fake("itnet::decay_scan_bwd")
def _bwd_fake(grad_y, grad_final_state, *args):
    args, checkpoints = args[:len(_ARGS)], args[len(_ARGS):]
    x = args[0]
    check_devices(x, zip(("grad_y", "grad_final_state") + _ARGS + ("checkpoints",),
                         (grad_y, grad_final_state) + tuple(args) + tuple(checkpoints)), "x")
    # contiguous gradients in the inputs' shapes; an absent input gets an empty tensor
    return tuple(t.new_empty(t.shape) if t is not None else x.new_empty((0,)) for t in args)


def _setup_context(ctx, inputs, output):
    _, _, ckpt = output
    ctx.mark_non_differentiable(ckpt)
    ctx.save_for_backward(*inputs[:len(_ARGS)], ckpt)


def _backward(ctx, grad_y, grad_final_state, _grad_ckpt):
    *saved, ckpt = ctx.saved_tensors
    x = saved[0]
    if grad_y is None:
        grad_y = torch.zeros_like(x)
    grads = torch.ops.itnet.decay_scan_bwd(grad_y, grad_final_state, *saved,
                                           ckpt if ckpt.numel() else None)
    return tuple(g if t is not None and need else None
                 for g, t, need in zip(grads, saved, ctx.needs_input_grad)) + (None,)


torch.library.register_autograd("itnet::decay_scan_fwd", _backward, setup_context=_setup_context)
register_no_double_backward("itnet::decay_scan_bwd", "decay scan", "itnet_ext.reference.decay_scan")
