// A small register-blocked matrix multiply on at::vec lanes, shared by the
// CPU kernels of every strategy: the q.k, P.v and gradient products of the
// dense tiles, the sparse op's pair-MLP backward, the low-rank op's FAVOR+
// projection and state products (the lane helpers and Ops<Vectorized> come
// from common/cpu_vec.h).
//
// Included only by sources compiled once per CPU capability (DEFAULT, AVX2,
// AVX512; MULTI_ARCH_SOURCES in setup.py) with the matching -m flags, so
// Vectorized<T> is the widest vector of that capability; everything here is
// inside the capability's namespace.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/cpu_vec.h"

namespace itnet {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

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
// Register blocking: MR (<= 6, kGemmMR below) rows x 4 vectors of C stay in
// registers across the kk loop. The accumulators are named variables, not an array: GCC keeps
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
  V c40 = z, c41 = z, c42 = z, c43 = z, c50 = z, c51 = z, c52 = z, c53 = z;
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
    ITNET_GEMM_ROW(4)
    ITNET_GEMM_ROW(5)
  }
  const V va(alpha);
  ITNET_GEMM_PUT(0)
  ITNET_GEMM_PUT(1)
  ITNET_GEMM_PUT(2)
  ITNET_GEMM_PUT(3)
  ITNET_GEMM_PUT(4)
  ITNET_GEMM_PUT(5)
}
#undef ITNET_GEMM_ROW
#undef ITNET_GEMM_PUT

// Rows of C per register block: 6 x 4 vectors = 24 accumulators, plus the 4
// vectors of a B row and one broadcast, fit AVX-512's 32 registers (10 loads
// per 24 FMAs). AVX2 and the default build have 16 registers: 4 rows.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kGemmMR = 6;
#else
constexpr int kGemmMR = 4;
#endif

template <bool FULL, class T>
inline void gemm_panel(int64_t m, int64_t n, int64_t kk, T alpha, const T* A, int64_t a_rs,
                       int64_t a_cs, const T* Bm, int64_t ldb, bool accumulate, T* C,
                       int64_t ldc) {
  int64_t i = 0;
  for (; i + kGemmMR <= m; i += kGemmMR)
    gemm_block<kGemmMR, FULL>(n, kk, alpha, A + i * a_rs, a_rs, a_cs, Bm, ldb, accumulate,
                              C + i * ldc, ldc);
  const T* Ai = A + i * a_rs;
  T* Ci = C + i * ldc;
  switch (m - i) {
    case 5:
      if constexpr (kGemmMR > 5)
        gemm_block<5, FULL>(n, kk, alpha, Ai, a_rs, a_cs, Bm, ldb, accumulate, Ci, ldc);
      break;
    case 4:
      if constexpr (kGemmMR > 4)
        gemm_block<4, FULL>(n, kk, alpha, Ai, a_rs, a_cs, Bm, ldb, accumulate, Ci, ldc);
      break;
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
}  // namespace itnet
