// The pair-MLP register blocks and the row helpers of the CPU kernels of the
// dense and sparse ops (dense/cpu_tile.h, sparse/cpu_kernel.cpp): the hidden
// layer of a run of pairs projected onto up to 8 heads in registers, its
// backward, and the online-softmax / `none`-weight row operations on the
// logit rows. Vectorized over pairs on at::vec lanes; the activation formulas
// are common/activation.h's, shared with the CUDA kernels.
//
// Included only by sources compiled once per CPU capability (see
// common/cpu_vec.h): everything is inside the capability's namespace.
#pragma once

#include <algorithm>
#include <cstdint>

#include "common/activation.h"
#include "common/cpu_vec.h"
#include "common/math.h"

namespace itnet {
namespace CPU_CAPABILITY {
namespace pair_tile {

template <class T>
using Vec = Vectorized<T>;

// ---------------------------------------------------------------------------
// Row helpers (vector body, scalar tail: the tail must not see padding lanes)

template <class T>
inline T row_max(const T* x, int64_t n) {
  using V = Vec<T>;
  constexpr int64_t VS = V::size();
  T mx = neg_inf<T>();
  int64_t j = 0;
  if (n >= VS) {
    V vm = V::loadu(x);
    for (j = VS; j + VS <= n; j += VS) vm = at::vec::maximum(vm, V::loadu(x + j));
    mx = at::vec::vec_reduce_all<T>([](V& a, V& b) { return at::vec::maximum(a, b); }, vm);
  }
  for (; j < n; ++j) mx = x[j] > mx ? x[j] : mx;
  return mx;
}

// x <- exp(x - shift); returns the sum of the new values.
template <class T>
inline T row_exp_sum(const T* src, T* dst, int64_t n, T shift) {
  using V = Vec<T>;
  constexpr int64_t VS = V::size();
  const V vs(shift);
  V acc(T(0));
  int64_t j = 0;
  for (; j + VS <= n; j += VS) {
    const V e = Ops<V>::exp(V::loadu(src + j) - vs);
    e.store(dst + j);
    acc = acc + e;
  }
  T s = hsum(acc);
  for (; j < n; ++j) {
    dst[j] = Ops<T>::exp(src[j] - shift);
    s += dst[j];
  }
  return s;
}

// `none` normalization: a = l * w on the support (sup[j] != 0), whatever l is (-inf
// included), 0 off it. (Scalar: one multiply per pair beside the gemm's Dv.)
template <class T>
inline void row_linear_weights(const T* S, const unsigned char* sup, const T* kscale, T* A,
                               int64_t n) {
  for (int64_t j = 0; j < n; ++j) A[j] = sup[j] ? S[j] * (kscale ? kscale[j] : T(1)) : T(0);
}

template <class T>
inline void row_add(T* x, const T* y, int64_t n) {
  using V = Vec<T>;
  constexpr int64_t VS = V::size();
  for (int64_t j = 0; j < n; j += VS) {
    const int64_t cnt = std::min(VS, n - j);
    store(load(x + j, cnt) + load(y + j, cnt), x + j, cnt);
  }
}

template <class T>
inline void row_scale(T* x, T a, int64_t n) {
  using V = Vec<T>;
  constexpr int64_t VS = V::size();
  const V va(a);
  for (int64_t j = 0; j < n; j += VS) {
    const int64_t cnt = std::min(VS, n - j);
    store(load(x + j, cnt) * va, x + j, cnt);
  }
}

// Hidden layer of `cnt` pairs (i, jv..jv+cnt) and its projection onto the
// NH (<= 8) heads starting at h, accumulated in registers (named variables:
// see gemm_block in common/cpu_gemm.h). The first chunk of heads evaluates the activation and
// leaves it in `hid` for the following chunks (only when H > 8).
#define ITNET_MLP_INIT(c) \
  if constexpr (NH > c) a##c = b2h ? V(b2h[c]) : V(T(0));
#define ITNET_MLP_ACC(c) \
  if constexpr (NH > c) a##c = at::vec::fmadd(V(wr[c * R]), hv, a##c);
#define ITNET_MLP_PUT(c)                     \
  if constexpr (NH > c) {                    \
    T* sp = S + c * s_head;                  \
    store(load(sp, cnt) + a##c, sp, cnt);    \
  }
template <int NH, Activation A, class T>
inline void mlp_heads(int64_t R, const T* ui, const T* ts, int64_t tld, int64_t cnt, bool first,
                      T* hid, const T* w, const T* b2h, T* S, int64_t s_head) {
  using V = Vec<T>;
  constexpr int64_t VS = V::size();
  V a0, a1, a2, a3, a4, a5, a6, a7;
  ITNET_MLP_INIT(0) ITNET_MLP_INIT(1) ITNET_MLP_INIT(2) ITNET_MLP_INIT(3)
  ITNET_MLP_INIT(4) ITNET_MLP_INIT(5) ITNET_MLP_INIT(6) ITNET_MLP_INIT(7)
  for (int64_t r = 0; r < R; ++r) {
    V hv;
    if (first) {
      V pre = ui ? V(ui[r]) : V(T(0));
      if (ts) pre = pre + load(ts + r * tld, cnt);
      hv = Act<A, V>::fwd(pre);
      hv.store(hid + r * VS);
    } else {
      hv = V::loadu(hid + r * VS);
    }
    const T* wr = w + r;
    ITNET_MLP_ACC(0) ITNET_MLP_ACC(1) ITNET_MLP_ACC(2) ITNET_MLP_ACC(3)
    ITNET_MLP_ACC(4) ITNET_MLP_ACC(5) ITNET_MLP_ACC(6) ITNET_MLP_ACC(7)
  }
  ITNET_MLP_PUT(0) ITNET_MLP_PUT(1) ITNET_MLP_PUT(2) ITNET_MLP_PUT(3)
  ITNET_MLP_PUT(4) ITNET_MLP_PUT(5) ITNET_MLP_PUT(6) ITNET_MLP_PUT(7)
}
#undef ITNET_MLP_INIT
#undef ITNET_MLP_ACC
#undef ITNET_MLP_PUT

// Head projection part of the MLP backward for NH (<= 8) heads starting at
// h, the logit gradients of `cnt` pairs held in registers (named: see
// gemm_block): dhid_r += sum_h W2[h, r] dS_h,  dW2[h, r] += dS_h hid_r,
// db2[h] += dS_h (vector partial sums, reduced once per item).
#define ITNET_BWD_LOAD(c)                           \
  if constexpr (NH > c) {                           \
    d##c = load(dS + c * s_head, cnt);              \
    T* db = db2acc + c * VS;                        \
    (V::loadu(db) + d##c).store(db);                \
  }
#define ITNET_BWD_ACC(c)                                             \
  if constexpr (NH > c) {                                            \
    dh = at::vec::fmadd(V(wr[c * R]), d##c, dh);                     \
    T* dw = dW2acc + (c * R + r) * VS;                               \
    at::vec::fmadd(d##c, hv, V::loadu(dw)).store(dw);                \
  }
template <int NH, class T>
inline void mlp_heads_bwd(int64_t R, const T* hid, T* dhid, const T* w, const T* dS,
                          int64_t s_head, int64_t cnt, T* dW2acc, T* db2acc) {
  using V = Vec<T>;
  constexpr int64_t VS = V::size();
  V d0, d1, d2, d3, d4, d5, d6, d7;  // masked lanes load as 0
  ITNET_BWD_LOAD(0) ITNET_BWD_LOAD(1) ITNET_BWD_LOAD(2) ITNET_BWD_LOAD(3)
  ITNET_BWD_LOAD(4) ITNET_BWD_LOAD(5) ITNET_BWD_LOAD(6) ITNET_BWD_LOAD(7)
  for (int64_t r = 0; r < R; ++r) {
    const V hv = V::loadu(hid + r * VS);
    V dh = V::loadu(dhid + r * VS);
    const T* wr = w + r;
    ITNET_BWD_ACC(0) ITNET_BWD_ACC(1) ITNET_BWD_ACC(2) ITNET_BWD_ACC(3)
    ITNET_BWD_ACC(4) ITNET_BWD_ACC(5) ITNET_BWD_ACC(6) ITNET_BWD_ACC(7)
    dh.store(dhid + r * VS);
  }
}
#undef ITNET_BWD_LOAD
#undef ITNET_BWD_ACC

}  // namespace pair_tile
}  // namespace CPU_CAPABILITY
}  // namespace itnet
