// Elementwise math written once for every backend.
//
// Every function here is a template over the "lane" type T, which is either a
// scalar (float / double, host or CUDA device) or a SIMD vector (the CPU
// kernels specialise `Ops<at::vec::Vectorized<T>>` in common/cpu_vec.h).
// The primitive operations a formula needs (exp, max(x, 0), x > 0 ? 1 : 0)
// come from the `Ops<T>` traits class, so the formulas themselves - the
// activations (common/activation.h), their derivatives and the online-softmax
// bookkeeping - exist exactly once and the CPU tests exercise the same code
// the CUDA kernels run.
#pragma once

#include <cmath>
#include <limits>

#include "common/macros.h"

namespace itnet {

// Primitive operations per lane type; specialised for vector types elsewhere.
template <class T>
struct Ops;

template <>
struct Ops<float> {
  static ITNET_HD float exp(float x) { return ::expf(x); }
  static ITNET_HD float relu(float x) { return x > 0.f ? x : 0.f; }
  static ITNET_HD float step(float x) { return x > 0.f ? 1.f : 0.f; }
};

template <>
struct Ops<double> {
  static ITNET_HD double exp(double x) { return ::exp(x); }
  static ITNET_HD double relu(double x) { return x > 0.0 ? x : 0.0; }
  static ITNET_HD double step(double x) { return x > 0.0 ? 1.0 : 0.0; }
};

// ---- online softmax (per query row, scalars) --------------------------------
//
// State (m, l): running max of the logits seen so far and the sum of
// exp(logit - m). -inf / 0 is the state of a row that has seen no key of its
// support yet; such rows must never produce NaN (exp(-inf - -inf)).
// +inf / -inf. In device code std::numeric_limits is a host function (nvcc
// refuses it without --expt-relaxed-constexpr); the builtin is the same value.
template <class T>
ITNET_HD T pos_inf() {
#if defined(__CUDA_ARCH__)
  return static_cast<T>(__builtin_huge_val());
#else
  return std::numeric_limits<T>::infinity();
#endif
}

template <class T>
ITNET_HD T neg_inf() {
  return -pos_inf<T>();
}

// Factor that rescales the old accumulators when the running max moves from
// m_old to m_new (m_new >= m_old). 0 when nothing was accumulated yet.
template <class T>
ITNET_HD T softmax_rescale(T m_old, T m_new) {
  return m_old == neg_inf<T>() ? T(0) : Ops<T>::exp(m_old - m_new);
}

// The max that exponentials of a tile are shifted by: a row whose max is
// still -inf has only masked entries, shift by 0 so exp(-inf - 0) = 0.
template <class T>
ITNET_HD T softmax_shift(T m_new) {
  return m_new == neg_inf<T>() ? T(0) : m_new;
}

// log-sum-exp of a finished row; -inf for an empty support (l == 0). A row
// with a NaN logit has l = NaN and gets lse = NaN, so that its backward
// weights are NaN too, as the oracle's (not those of an empty row).
template <class T>
ITNET_HD T softmax_lse(T m, T l) {
  return l == T(0) ? neg_inf<T>() : m + ::log(l);
}

// 1 / l, or 0 for an empty support (the output of such a row is exactly 0);
// NaN for a NaN sum.
template <class T>
ITNET_HD T softmax_inv_sum(T l) {
  return l == T(0) ? T(0) : T(1) / l;
}

// What the backward subtracts from a logit to get the probability:
// an empty row (lse = -inf) uses +inf so that exp(-inf - inf) = 0.
template <class T>
ITNET_HD T softmax_bwd_shift(T lse) {
  return lse == neg_inf<T>() ? pos_inf<T>() : lse;
}

}  // namespace itnet
