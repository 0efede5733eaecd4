// Raw-pointer view of one call of the dense integral transform, filled by the
// backend entry points (cpu.cpp, dense_cuda.cpp, flash/entry_cuda.cpp) and read
// by the kernels. Pointers to tensors that are absent are null. All tensors are
// contiguous unless a stride is listed; element types are the op's scalar type
// except positions (double), the key padding mask (bool), and u, t, W2, b2, E,
// key_bias, key_scale and the mask, which are in prepare()'s `aux` dtype
// (float32 for the 16-bit flash kernels, whose lse and delta are float32 too).
#pragma once

#include <cstdint>

#include "common/support.h"

namespace itnet {
namespace dense {

struct FwdParams {
  int64_t B = 0, H = 0, N = 0, M = 0, Dk = 0, Dv = 0, R = 0;

  // Which logit terms are on. Decided from the arguments, not from the
  // pointers: a zero-size tensor has a null data pointer but is present.
  bool content = false;  // q, k given
  bool mlp = false;      // W2 given

  // content term
  const void* q = nullptr;    // (B, H, N, Dk)
  const void* k = nullptr;    // (B, H, M, Dk)
  // CPU kernels read k, v (backward) and t per key tile, transposed:
  // (B, H, nt, Dk, kCpuBlockK) etc., nt = ceil(M / kCpuBlockK), zero padded
  const void* kT = nullptr;   // (B, H, nt, Dk, tile)
  const void* v = nullptr;    // (B, H, M, Dv)
  const void* vT = nullptr;   // (B, H, nt, Dv, tile), backward only
  double scale = 1.0;

  // MLP term
  const void* u = nullptr;     // (B, N, R) or null (= 0)
  const void* tT = nullptr;    // (B, nt, R, tile) on CPU, or null (= 0)
  const void* W2 = nullptr;    // (H, R)
  const void* b2 = nullptr;    // (H,) or null
  const void* E = nullptr;     // offset table (O, R) or null
  int64_t O = 0;
  int activation = 0;          // itnet::Activation

  // support
  Window window;               // window.dims == 0: no window
  const double* qpos = nullptr;  // (Bq, N, D), Bq in {1, B}; null when unused
  const double* kpos = nullptr;  // (Bk, M, D)
  int64_t qpos_bstride = 0, kpos_bstride = 0;  // 0 when broadcast over batch
  bool causal = false;
  // per-key additive bias (B, M): 0 / log w_j (softmax) and -inf for padded keys
  const void* key_bias = nullptr;
  // per-key weight (B, M) for `none` mode (null = 1)
  const void* key_scale = nullptr;
  // additive attention mask, any broadcast of (B, H, N, M): element strides
  const void* mask = nullptr;
  int64_t mask_stride[4] = {0, 0, 0, 0};

  bool softmax = true;

  // outputs
  void* out = nullptr;  // (B, H, N, Dv)
  void* lse = nullptr;  // (B, H, N), softmax mode only
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
