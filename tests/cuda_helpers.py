"""Helpers shared by the CUDA test files (tests/test_dense_cuda*.py)."""
import os

import pytest
import torch

DIFF_NAMES = ("q", "k", "v", "u", "t", "W2", "b2", "offset_table", "key_weight")


def cuda_ready():
    """A GPU is visible and itnet_ext was built with its CUDA kernels."""
    if not torch.cuda.is_available():
        return False
    try:
        import itnet_ext  # noqa: F401  (registers torch.ops.itnet)
        return bool(torch.ops.itnet.cuda_kernels_compiled())
    except (AttributeError, RuntimeError, ImportError):
        return False


# ITNET_REQUIRE_CUDA=1 (set by scripts/gpu_check.sh where the kernels are built): a missing GPU
# or kernel build fails the CUDA tests instead of skipping them silently.
if os.environ.get("ITNET_REQUIRE_CUDA") == "1" and not cuda_ready():
    raise RuntimeError("ITNET_REQUIRE_CUDA=1 but no GPU is visible or itnet_ext has no CUDA kernels")

requires_cuda = pytest.mark.skipif(
    not cuda_ready(), reason="needs a GPU and itnet_ext built with its CUDA kernels")


def describe(kw):
    return ", ".join(f"{k}={tuple(v.shape)}" if isinstance(v, torch.Tensor) else f"{k}={v!r}"
                     for k, v in kw.items())


def to_dev(kw, dtype, device):
    """Fresh leaves (requiring grad) of the differentiable inputs in dtype on device; the
    other tensors moved too (float ones cast)."""
    out = {}
    for n, x in kw.items():
        if isinstance(x, torch.Tensor):
            x = x.detach().to(device)
            if x.is_floating_point():
                x = x.to(dtype)
            if n in DIFF_NAMES:
                x = x.clone().requires_grad_()
        out[n] = x
    return out
