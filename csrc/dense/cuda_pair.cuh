// Device helpers of the CUDA dense kernels (cuda_fwd.cu, cuda_bwd.cu): the
// logit of one (query, key) pair for one head, built from the shared math of
// csrc/common (activations, support predicates, offset indexing, the warp
// helpers of common/cuda_warp.cuh, the pair MLP's of common/cuda_pair_mlp.cuh),
// and the backward's shared-memory layout.
// Every kernel works warp by warp: a warp owns one row (a query in the
// forward and the query-side backward, a key in the key-side backward) and
// its 32 lanes evaluate 32 pairs of that row at a time, one pair per lane.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/activation.h"
#include "common/cuda_pair_mlp.cuh"
#include "common/cuda_warp.cuh"
#include "common/math.h"
#include "common/support.h"
#include "dense/params.h"

namespace itnet {
namespace dense {
namespace cuda {

// The helpers shared with the sparse kernels (common/cuda_warp.cuh,
// common/cuda_pair_mlp.cuh) by their plain names.
using namespace itnet::cuda;

// Logit of the pair (i, j) for head h of batch b, or -inf with on = false when
// the pair is off the support (causal, window, padded key, attn_mask -inf).
// `on` tells the support apart from a logit that is -inf by itself (`none`
// mode: weight -inf w, as the oracle's l w). erow receives the offset-table row
// of the pair (0 without a table or off the support). Sum order as on CPU:
// content + MLP (b2 + sum_r W2 act) + key bias + mask.
template <class T, Activation A>
__device__ T pair_logit(const FwdParams& p, int64_t b, int64_t h, int64_t i, int64_t j,
                        int64_t& erow, bool& on) {
  const T ninf = neg_inf<T>();
  erow = 0;
  on = false;
  if (p.causal && !causal_allows(i, j)) return ninf;
  if (p.window.dims > 0) {
    const int D = p.window.dims;
    const double* pq = p.qpos + b * p.qpos_bstride + i * D;
    const double* pk = p.kpos + b * p.kpos_bstride + j * D;
    if (!window_allows(p.window, pq, pk)) return ninf;
    if (p.E) erow = offset_row(p.window, pq, pk);
  }
  T kb = T(0);
  if (p.key_bias) {
    kb = cptr<T>(p.key_bias)[b * p.M + j];
    if (kb == ninf) return ninf;
  }
  T mk = T(0);
  if (p.mask) {
    const int64_t* st = p.mask_stride;
    mk = cptr<T>(p.mask)[b * st[0] + h * st[1] + i * st[2] + j * st[3]];
    if (mk == ninf) return ninf;
  }
  T s = T(0);
  if (p.content) {  // (Dk may be 0: q, k null, nothing read)
    const int64_t bh = b * p.H + h;
    const T* qi = cptr<T>(p.q) + (bh * p.N + i) * p.Dk;
    const T* kj = cptr<T>(p.k) + (bh * p.M + j) * p.Dk;
    T acc = T(0);
    for (int64_t d = 0; d < p.Dk; ++d) acc += qi[d] * kj[d];
    s = static_cast<T>(p.scale) * acc;
  }
  if (p.mlp) {  // (R may be 0: only b2)
    const MlpRows<T> rows = mlp_rows<T>(p, b, i, j, erow);
    const T* w2 = cptr<T>(p.W2) + h * p.R;
    T acc = p.b2 ? cptr<T>(p.b2)[h] : T(0);
    for (int64_t r = 0; r < p.R; ++r)
      acc += w2[r] * Act<A, T>::fwd(pair_preact(rows.u, rows.t, rows.e, r));
    s += acc;
  }
  if (p.key_bias) s += kb;
  if (p.mask) s += mk;
  on = true;
  return s;
}

// Per-warp shared-memory layout of the backward kernels: the 32 pair
// offsets and two 32-vectors of the current chunk of pairs, then `nacc`
// accumulators of length R owned lane by lane (entry r by lane r % 32).
// Each warp's slice is padded to 16 bytes so that the next one is aligned.
struct WarpSmem {
  int64_t bytes_per_warp;
  int64_t off_vec;  // byte offset of the two T[32] vectors
  int64_t off_acc;  // byte offset of the accumulators

  ITNET_HD static WarpSmem make(int64_t elem_size, int64_t R, int nacc) {
    WarpSmem s;
    s.off_vec = kWarp * static_cast<int64_t>(sizeof(int64_t));
    s.off_acc = s.off_vec + 2 * kWarp * elem_size;
    const int64_t end = s.off_acc + nacc * R * elem_size;
    s.bytes_per_warp = (end + 15) / 16 * 16;
    return s;
  }
};

}  // namespace cuda
}  // namespace dense
}  // namespace itnet
