// Raw-pointer view of one call of the sparse (pair-list) integral transform,
// filled by the entry points (sparse/cpu.cpp, sparse/sparse_cuda.cpp) and read
// by the kernels. The pair kernel is the one the dense op has too
// (KernelParams, common/kernel_params.h: every tensor contiguous in its
// natural layout, t (B, M, R));
// the support is the pair list, always in CSR form here: the padded form
// (idx (B, N, S)) is CSR with row_ptr[b, i] = i * S (sparse/prepare.cpp).
#pragma once

#include <cstdint>

#include "common/kernel_params.h"

namespace itnet {
namespace sparse {

struct SparseParams {
  KernelParams f;  // the pair kernel: terms, window, normalization, outputs
  // pairs of query i of batch b: entries row_ptr[b, i] <= e < row_ptr[b, i + 1]
  const int64_t* row_ptr = nullptr;  // (B, N + 1)
  const int64_t* col_idx = nullptr;  // (B, E), keys in [0, M) where the pair is present
  const void* log_w = nullptr;       // (B, E) or null (= 0); -inf = absent pair
  int64_t E = 0;
  // Key-major copies (prepare(..., key_major = true), the CPU kernels): every
  // head of one key in one contiguous block, so that gathering a pair's key
  // reads H * D contiguous values instead of H scattered rows.
  bool key_major = false;
  const void* k_km = nullptr;  // (B, M, H, Dk)
  const void* v_km = nullptr;  // (B, M, H, Dv)
};

struct SparseBwdParams {
  SparseParams s;
  const void* dout = nullptr;   // (B, H, N, Dv)
  const void* lse = nullptr;    // (B, H, N), softmax mode
  const void* delta = nullptr;  // (B, H, N) rowsum(dout * out) - grad_lse, softmax mode

  // Query-side gradients: owned by the query row's item (written directly).
  void* dq = nullptr;      // (B, H, N, Dk)
  void* du = nullptr;      // (B, N, R)
  void* dlog_w = nullptr;  // (B, E); absent pairs and padding entries get 0
  // Key-side and parameter gradients: `copies` buffers (CPU: one per thread,
  // summed by the entry point; CUDA: one, with atomics), base pointers.
  // (dk, dv key-major, (copies, B, M, H, D), when prepared key-major)
  void* dk = nullptr;      // (copies, B, H, M, Dk)
  void* dv = nullptr;      // (copies, B, H, M, Dv)
  void* dt = nullptr;      // (copies, B, M, R)
  void* dW2 = nullptr;     // (copies, H, R)
  void* db2 = nullptr;     // (copies, H)
  void* dE = nullptr;      // (copies, O, R)
};

}  // namespace sparse
}  // namespace itnet
