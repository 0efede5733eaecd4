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

#include "common/math.h"

namespace itnet {

template <class T>
struct Ops<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  static V exp(const V& x) { return x.exp(); }
  static V tanh(const V& x) { return x.tanh(); }
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

// C[m x n] (=|+=) alpha * A(m x kk) * Bm(kk x n)
//   A(i, p) = A[i * a_rs + p * a_cs]  (any strides: A is read one scalar at a
//   time and broadcast), Bm row-major with leading dimension ldb (rows are
//   vector-loaded), C row-major with leading dimension ldc.
// Register blocking: MR rows x 4 vectors of C live in registers across the
// whole kk loop; ragged edges use masked loads/stores.
template <int MR, class T>
inline void gemm_block(int64_t n, int64_t kk, T alpha, const T* A, int64_t a_rs, int64_t a_cs,
                       const T* Bm, int64_t ldb, bool accumulate, T* C, int64_t ldc) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  V acc[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < 4; ++c) acc[r][c] = V(T(0));
  if (n == 4 * VS) {
    for (int64_t p = 0; p < kk; ++p) {
      const T* b = Bm + p * ldb;
      const V b0 = V::loadu(b), b1 = V::loadu(b + VS), b2 = V::loadu(b + 2 * VS),
              b3 = V::loadu(b + 3 * VS);
      for (int r = 0; r < MR; ++r) {
        const V a(A[r * a_rs + p * a_cs]);
        acc[r][0] = at::vec::fmadd(a, b0, acc[r][0]);
        acc[r][1] = at::vec::fmadd(a, b1, acc[r][1]);
        acc[r][2] = at::vec::fmadd(a, b2, acc[r][2]);
        acc[r][3] = at::vec::fmadd(a, b3, acc[r][3]);
      }
    }
  } else {
    const int nv = static_cast<int>((n + VS - 1) / VS);
    for (int64_t p = 0; p < kk; ++p) {
      const T* b = Bm + p * ldb;
      V bv[4];
      for (int c = 0; c < 4; ++c)
        if (c < nv) bv[c] = load(b + c * VS, n - c * VS);
      for (int r = 0; r < MR; ++r) {
        const V a(A[r * a_rs + p * a_cs]);
        for (int c = 0; c < 4; ++c)
          if (c < nv) acc[r][c] = at::vec::fmadd(a, bv[c], acc[r][c]);
      }
    }
  }
  const V va(alpha);
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < 4; ++c) {
      const int64_t cnt = std::min<int64_t>(VS, n - c * VS);
      if (cnt <= 0) break;
      T* cp = C + r * ldc + c * VS;
      V res = acc[r][c] * va;
      if (accumulate) res = res + load(cp, cnt);
      store(res, cp, cnt);
    }
  }
}

template <class T>
inline void gemm(int64_t m, int64_t n, int64_t kk, T alpha, const T* A, int64_t a_rs,
                 int64_t a_cs, const T* Bm, int64_t ldb, bool accumulate, T* C, int64_t ldc) {
  constexpr int64_t NB = 4 * Vectorized<T>::size();
  for (int64_t j0 = 0; j0 < n; j0 += NB) {
    const int64_t nn = std::min(NB, n - j0);
    int64_t i = 0;
    for (; i + 4 <= m; i += 4)
      gemm_block<4>(nn, kk, alpha, A + i * a_rs, a_rs, a_cs, Bm + j0, ldb, accumulate,
                    C + i * ldc + j0, ldc);
    const T* Ai = A + i * a_rs;
    T* Ci = C + i * ldc + j0;
    switch (m - i) {
      case 3: gemm_block<3>(nn, kk, alpha, Ai, a_rs, a_cs, Bm + j0, ldb, accumulate, Ci, ldc); break;
      case 2: gemm_block<2>(nn, kk, alpha, Ai, a_rs, a_cs, Bm + j0, ldb, accumulate, Ci, ldc); break;
      case 1: gemm_block<1>(nn, kk, alpha, Ai, a_rs, a_cs, Bm + j0, ldb, accumulate, Ci, ldc); break;
      default: break;
    }
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace dense
}  // namespace itnet
