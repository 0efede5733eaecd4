// SIMD building blocks of the CPU kernels: the Ops<> specialisation that lets
// the shared formulas in common/math.h run on at::vec::Vectorized lanes, and a
// small register-blocked matrix multiply used for the q.k, P.v and gradient
// products of a tile.
//
// This header is included only by cpu_kernel.cpp, which is compiled once per
// CPU capability (DEFAULT, AVX2, AVX512) with the matching -m flags, so
// Vectorized<T> is the widest vector of that capability.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/math.h"

namespace itnet {

template <class T>
struct Ops<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  // float: ATen's fast polynomial exp (max error ~20 ulp, exp(-inf) = 0, no
  // overflow to inf); double: the accurate Sleef exp (exp_u20 maps to it).
  static V exp(const V& x) { return x.exp_u20(); }
  static V relu(const V& x) { return at::vec::clamp_min(x, V(T(0))); }
  static V step(const V& x) { return V::blendv(V(T(0)), V(T(1)), x > V(T(0))); }
};

namespace dense {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

template <class T>
inline Vectorized<T> load(const T* p, int64_t count) {
  using V = Vectorized<T>;
  return count >= V::size() ? V::loadu(p) : V::loadu(p, count);
}

template <class T>
inline void store(const Vectorized<T>& x, T* p, int64_t count) {
  using V = Vectorized<T>;
  if (count >= V::size()) {
    x.store(p);
  } else {
    x.store(p, count);
  }
}

template <class T>
inline T hsum(const Vectorized<T>& x) {
  return at::vec::vec_reduce_all<T>([](Vectorized<T>& a, Vectorized<T>& b) { return a + b; }, x);
}

// Loads `count` lanes (count may be <= 0: all lanes 0).
template <class T>
inline Vectorized<T> load_n(const T* p, int64_t count) {
  using V = Vectorized<T>;
  if (count >= V::size()) return V::loadu(p);
  return count > 0 ? V::loadu(p, count) : V(T(0));
}

// C[0:cnt] (=|+=) alpha * acc
template <class T>
inline void put(const Vectorized<T>& acc, const Vectorized<T>& alpha, bool accumulate, T* c,
                int64_t cnt) {
  if (cnt <= 0) return;
  Vectorized<T> res = acc * alpha;
  if (accumulate) res = res + load(c, cnt);
  store(res, c, cnt);
}

// C[m x n] (=|+=) alpha * A(m x kk) * Bm(kk x n)
//   A(i, p) = A[i * a_rs + p * a_cs]  (any strides: A is read one scalar at a
//   time and broadcast), Bm row-major with leading dimension ldb (rows are
//   vector-loaded), C row-major with leading dimension ldc.
// Register blocking: MR (<= 4) rows x 4 vectors of C stay in registers across
// the kk loop. The accumulators are named variables, not an array: GCC keeps
// an array of Vectorized objects in memory and stores it every iteration.
// FULL: n == 4 vectors; otherwise the ragged edge uses masked loads/stores.
#define ITNET_GEMM_ROW(r)                                       \
  if constexpr (MR > r) {                                       \
    const V a(A[r * a_rs + p * a_cs]);                          \
    c##r##0 = at::vec::fmadd(a, b0, c##r##0);                   \
    c##r##1 = at::vec::fmadd(a, b1, c##r##1);                   \
    c##r##2 = at::vec::fmadd(a, b2, c##r##2);                   \
    c##r##3 = at::vec::fmadd(a, b3, c##r##3);                   \
  }
#define ITNET_GEMM_PUT(r)                                       \
  if constexpr (MR > r) {                                       \
    T* cr = C + r * ldc;                                        \
    put(c##r##0, va, accumulate, cr, n);                        \
    put(c##r##1, va, accumulate, cr + VS, n - VS);              \
    put(c##r##2, va, accumulate, cr + 2 * VS, n - 2 * VS);      \
    put(c##r##3, va, accumulate, cr + 3 * VS, n - 3 * VS);      \
  }

template <int MR, bool FULL, class T>
inline void gemm_block(int64_t n, int64_t kk, T alpha, const T* A, int64_t a_rs, int64_t a_cs,
                       const T* Bm, int64_t ldb, bool accumulate, T* C, int64_t ldc) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  const V z(T(0));
  V c00 = z, c01 = z, c02 = z, c03 = z, c10 = z, c11 = z, c12 = z, c13 = z;
  V c20 = z, c21 = z, c22 = z, c23 = z, c30 = z, c31 = z, c32 = z, c33 = z;
  for (int64_t p = 0; p < kk; ++p) {
    const T* b = Bm + p * ldb;
    V b0, b1, b2, b3;
    if constexpr (FULL) {
      b0 = V::loadu(b);
      b1 = V::loadu(b + VS);
      b2 = V::loadu(b + 2 * VS);
      b3 = V::loadu(b + 3 * VS);
    } else {
      b0 = load_n(b, n);
      b1 = load_n(b + VS, n - VS);
      b2 = load_n(b + 2 * VS, n - 2 * VS);
      b3 = load_n(b + 3 * VS, n - 3 * VS);
    }
    ITNET_GEMM_ROW(0)
    ITNET_GEMM_ROW(1)
    ITNET_GEMM_ROW(2)
    ITNET_GEMM_ROW(3)
  }
  const V va(alpha);
  ITNET_GEMM_PUT(0)
  ITNET_GEMM_PUT(1)
  ITNET_GEMM_PUT(2)
  ITNET_GEMM_PUT(3)
}
#undef ITNET_GEMM_ROW
#undef ITNET_GEMM_PUT

template <bool FULL, class T>
inline void gemm_panel(int64_t m, int64_t n, int64_t kk, T alpha, const T* A, int64_t a_rs,
                       int64_t a_cs, const T* Bm, int64_t ldb, bool accumulate, T* C,
                       int64_t ldc) {
  int64_t i = 0;
  for (; i + 4 <= m; i += 4)
    gemm_block<4, FULL>(n, kk, alpha, A + i * a_rs, a_rs, a_cs, Bm, ldb, accumulate,
                        C + i * ldc, ldc);
  const T* Ai = A + i * a_rs;
  T* Ci = C + i * ldc;
  switch (m - i) {
    case 3: gemm_block<3, FULL>(n, kk, alpha, Ai, a_rs, a_cs, Bm, ldb, accumulate, Ci, ldc); break;
    case 2: gemm_block<2, FULL>(n, kk, alpha, Ai, a_rs, a_cs, Bm, ldb, accumulate, Ci, ldc); break;
    case 1: gemm_block<1, FULL>(n, kk, alpha, Ai, a_rs, a_cs, Bm, ldb, accumulate, Ci, ldc); break;
    default: break;
  }
}

template <class T>
inline void gemm(int64_t m, int64_t n, int64_t kk, T alpha, const T* A, int64_t a_rs,
                 int64_t a_cs, const T* Bm, int64_t ldb, bool accumulate, T* C, int64_t ldc) {
  constexpr int64_t NB = 4 * Vectorized<T>::size();
  for (int64_t j0 = 0; j0 < n; j0 += NB) {
    const int64_t nn = std::min(NB, n - j0);
    if (nn == NB)
      gemm_panel<true>(m, nn, kk, alpha, A, a_rs, a_cs, Bm + j0, ldb, accumulate, C + j0, ldc);
    else
      gemm_panel<false>(m, nn, kk, alpha, A, a_rs, a_cs, Bm + j0, ldb, accumulate, C + j0, ldc);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace dense
}  // namespace itnet
