// Raw-pointer view of the pair kernel of one call, as the kernels of the
// dense and sparse ops read it: shapes, which logit terms are on, the content
// and MLP operands, the support (window, positions, offset table), the
// normalization and the outputs. Filled by prepare_terms()
// (common/prepare_terms.h); dense::FwdParams adds the dense op's own parts
// (key tiles, causal, per-key bias / scale, attention mask) and
// sparse::SparseParams the pair list. Pointers to absent tensors are null;
// every tensor is contiguous in the layout listed, in the op's scalar type
// except positions (double) and u, t, W2, b2, E, which are in prepare's `aux`
// dtype (float32 for the 16-bit flash kernels).
#pragma once

#include <cstdint>

#include "common/support.h"

namespace itnet {

struct KernelParams {
  int64_t B = 0, H = 0, N = 0, M = 0, Dk = 0, Dv = 0, R = 0;

  // Which logit terms are on. Decided from the arguments, not from the
  // pointers: a zero-size tensor has a null data pointer but is present.
  bool content = false;  // q, k given
  bool mlp = false;      // W2 given

  // content term (keys of padded positions zeroed, see prepare_terms)
  const void* q = nullptr;  // (B, H, N, Dk)
  const void* k = nullptr;  // (B, H, M, Dk)
  const void* v = nullptr;  // (B, H, M, Dv)
  double scale = 1.0;

  // MLP term
  const void* u = nullptr;   // (B, N, R) or null (= 0)
  const void* t = nullptr;   // (B, M, R) or null (= 0)
  const void* W2 = nullptr;  // (H, R)
  const void* b2 = nullptr;  // (H,) or null
  const void* E = nullptr;   // offset table (O, R) or null
  int64_t O = 0;
  int activation = 0;        // itnet::Activation

  // support
  Window window;                 // window.dims == 0: no window
  const double* qpos = nullptr;  // (Bq, N, D), Bq in {1, B}; null when unused
  const double* kpos = nullptr;  // (Bk, M, D)
  int64_t qpos_bstride = 0, kpos_bstride = 0;  // 0 when broadcast over batch

  bool softmax = true;

  // outputs
  void* out = nullptr;  // (B, H, N, Dv)
  void* lse = nullptr;  // (B, H, N), softmax mode only
};

}  // namespace itnet
