// Raw-pointer view of one call of the dense integral transform, filled by the
// backend entry points (cpu.cpp, dense_cuda.cpp, flash/entry_cuda.cpp) and read
// by the kernels. Pointers to tensors that are absent are null. All tensors are
// contiguous unless a stride is listed; element types are the op's scalar type
// except positions (double), the key padding mask (bool), and u, t, W2, b2, E,
// key_bias, key_scale and the mask, which are in prepare()'s `aux` dtype
// (float32 for the 16-bit flash kernels, whose lse and delta are float32 too).
#pragma once

#include <cstdint>

#include "common/kernel_params.h"

namespace itnet {
namespace dense {

// The pair kernel (KernelParams: shapes, terms, support, outputs) plus what
// only the dense op has.
struct FwdParams : KernelParams {
  // CPU kernels read k, v (backward) and t per key tile, transposed:
  // (B, H, nt, Dk, kCpuBlockK) etc., nt = ceil(M / kCpuBlockK), zero padded;
  // null on CUDA, whose kernels read k, v, t in their natural layout.
  const void* kT = nullptr;  // (B, H, nt, Dk, tile)
  const void* vT = nullptr;  // (B, H, nt, Dv, tile), backward only
  const void* tT = nullptr;  // (B, nt, R, tile) or null

  bool causal = false;
  // per-key additive bias (B, M): 0 / log w_j (softmax) and -inf for padded
  // keys; in the aux dtype, as are key_scale and the mask
  const void* key_bias = nullptr;
  // per-key weight (B, M) for `none` mode (null = 1)
  const void* key_scale = nullptr;
  // additive attention mask, any broadcast of (B, H, N, M): element strides
  const void* mask = nullptr;
  int64_t mask_stride[4] = {0, 0, 0, 0};
};

struct BwdParams {
  FwdParams f;
  const void* dout = nullptr;   // (B, H, N, Dv)
  const void* lse = nullptr;    // (B, H, N)  softmax mode
  const void* delta = nullptr;  // (B, H, N)  rowsum(dout * out), softmax mode

  // gradients: key side, owned by a key tile (written directly)
  void* dk = nullptr;   // (B, H, M, Dk)
  void* dv = nullptr;   // (B, H, M, Dv)
  void* dt = nullptr;   // (B, M, R)
  // gradients accumulated per thread, reduced by the caller:
  // base pointers of (T, ...) buffers, T = number of threads
  void* dq = nullptr;   // (T, B, H, N, Dk)
  void* du = nullptr;   // (T, B, N, R)
  void* dW2 = nullptr;  // (T, H, R)
  void* db2 = nullptr;  // (T, H)
  void* dE = nullptr;   // (T, O, R)
  void* dkw = nullptr;  // (T, B, M) d(loss)/d(key weight)
  bool need_dkw = false;
};

}  // namespace dense
}  // namespace itnet
