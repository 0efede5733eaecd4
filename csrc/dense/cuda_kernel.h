// Interface between the ATen-level CUDA entry points (dense_cuda.cpp) and the
// kernels (cuda_fwd.cu, cuda_bwd.cu). Plain C++: no ATen, no torch headers.
//
// Layouts are those of prepare() with key_tile = 0 (see prepare.h / params.h):
// q, k, v contiguous, u (B, N, R), t (B, M, R) in KernelParams::t, key_bias /
// key_scale (B, M), positions float64, the attention mask through its strides.
// Supported element types: float and double (float16 / bfloat16 calls beyond
// the flash kernels' limits reach them as float32 copies, see dense_cuda.cpp).
//
// The kernels of this file are the simple, exact reference implementation of
// the CUDA backend: one warp per row, 32 pairs per step, no tensor cores; the
// tensor-core kernels for float16 / bfloat16 are in flash/.
#pragma once

#include <cuda_runtime_api.h>

#include "dense/params.h"

namespace itnet {
namespace dense {

// Forward. p.out (B, H, N, Dv) must be zero-filled: the kernel accumulates in
// place. p.lse (B, H, N) is written in softmax mode. Launches nothing when
// B * H * N == 0. Runs on `stream`, no synchronisation.
void cuda_dense_fwd(const FwdParams& p, bool is_double, cudaStream_t stream);

// Backward. Unlike the CPU kernels' per-thread buffers, every gradient buffer
// here has no leading thread dim and must be zero-filled:
//   dq, dk (B, H, N|M, Dk), dv (B, H, M, Dv), du (B, N, R), dt (B, M, R),
//   dW2 (H, R), db2 (H,), dE (O, R), dkw (B, M) (d/d log w in softmax mode,
//   d/dw in `none` mode, as on CPU). Null pointers = gradient not wanted
//   (dW2 is required when the MLP term is on, dv always). lse and delta
//   (B, H, N) are required in softmax mode.
// Launches nothing when B * H * N * M == 0.
void cuda_dense_bwd(const BwdParams& bp, bool is_double, cudaStream_t stream);

}  // namespace dense
}  // namespace itnet
