// Host interface of the flash (tensor-core) kernels of the dense op, for
// float16 / bfloat16 q, k, v on sm_80+. Plain C++: no ATen, no CUDA headers
// beyond the runtime API.
//
// Inputs are those of FwdParams / BwdParams (params.h, prepare() with
// key_tile = 0) with two differences, arranged by the entry point
// (flash/entry_cuda.cpp):
//  - q, k, v, out, dout are 16-bit (Dtype) with Dk, Dv multiples of 8 and
//    16-byte aligned rows; everything else - u, t, W2, b2, offset_table,
//    key_bias, key_scale, the attention mask, lse, delta and every gradient
//    buffer except dq / dk / dv - is float32.
//  - the backward writes partial sums that the caller reduces (FlashGrads).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "dense/params.h"

namespace itnet {
namespace dense {
namespace flash {

enum class Dtype : int { Half = 0, BFloat16 = 1 };

// Limits of the flash kernels (beyond them the entry point uses the float32
// kernels on upcast copies).
constexpr int64_t kMaxHeadDimFwd = 256;
constexpr int64_t kMaxHeadDimBwd = 128;
constexpr int64_t kMaxR = 64;
constexpr int64_t kMaxTable = 8192;  // O * R floats of the offset table

// Padded head dim (template instance) for a call: 64, 128 or 256.
inline int head_dim_bucket(int64_t Dk, int64_t Dv) {
  const int64_t d = Dk > Dv ? Dk : Dv;
  return d <= 64 ? 64 : d <= 128 ? 128 : 256;
}

// Shared memory the forward / backward kernels need for p (bytes; the backward: dynamic plus
// static).
int64_t fwd_smem_bytes(const FwdParams& p);
int64_t bwd_smem_bytes(const FwdParams& p, bool want_dE);

void fwd(const FwdParams& p, Dtype dt, cudaStream_t stream);

// Gradient buffers of the backward: 16-bit dq / dk / dv, float32 partial sums
// otherwise, reduced by the caller in a fixed order (deterministic). Buffers
// marked `written` are fully overwritten (no zero fill needed); dE must be
// zero-filled.
struct FlashGrads {
  void* dq = nullptr;   // (B, H, N, Dk) 16-bit, written
  void* dk = nullptr;   // (B, H, M, Dk) 16-bit, written
  void* dv = nullptr;   // (B, H, M, Dv) 16-bit, written
  float* du = nullptr;  // (H, B, N, R) per head, written; null = not wanted
  float* dt = nullptr;  // (H, B, M, R) per head, written; null = not wanted
  float* dW2 = nullptr;   // (B, H, nkt, R) per key tile, written (MLP term)
  float* db2 = nullptr;   // (B, H, nkt) per key tile, written; null = not wanted
  float* dkw = nullptr;   // (H, B, M) per head, written; null = not wanted
  float* dE = nullptr;    // (O, R) atomically accumulated (zero-filled; not deterministic)
  // nkt the per-key-tile buffers were sized with (bwd_key_tiles): the launch checks that its
  // grid has as many key tiles (a flash configuration changed in between would overrun them)
  int64_t key_tiles = 0;
};

// Key tiles of the key-side backward pass (the nkt of FlashGrads).
int64_t bwd_key_tiles(const FwdParams& p);

void bwd(const BwdParams& bp, const FlashGrads& g, Dtype dt, cudaStream_t stream);

}  // namespace flash
}  // namespace dense
}  // namespace itnet
