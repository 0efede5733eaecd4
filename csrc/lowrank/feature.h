// The low-rank transform's per-element math, written once for the CPU
// kernels and the CUDA kernels (__host__ __device__ via ITNET_HD): the
// feature maps and their derivatives, the FAVOR+ exponent, and the softmax
// normalization with its cut of empty rows.
//
// FAVOR+ (Choromanski et al. 2021; itnet_ext/nn/feature_maps.py has the
// derivation): with x' = x Dk^(-1/4) and the projection rows W_r,
//   e_r(x) = W_r . x' - |x'|^2 / 2,   phi_r(x) = exp(e_r(x) - c) / sqrt(F).
// The stabilizer c is a constant of the forward (detached): a factor
// exp(-c_i) on a query row cancels between numerator and denominator, and a
// factor on all keys of a (b, h) slice cancels too, so softmax mode may use
// c_i = max_r e_r(q_i) per query row and c = max over the slice's keys and
// features; `none` mode uses c = 0. Gradient (c detached):
//   d e_r / d x' = W_r - x',  so  dx = Dk^(-1/4) (sum_r g_r W_r - x' sum_r g_r),
// with g_r = dphi_r * phi_r (d phi_r / d e_r = phi_r).
#pragma once

#include <cmath>

#include "common/macros.h"
#include "common/math.h"
#include "lowrank/params.h"

namespace itnet {
namespace lowrank {

// phi(x) for the elementwise maps (Identity, EluPlusOne, Relu). T is a scalar
// or a CPU SIMD lane (common/math.h's Ops<T>), so the formulas are branch-free:
// elu(x) + 1 is relu(x) + 1 for x > 0 and exp(min(x, 0)) for x <= 0, with
// min(x, 0) = -relu(-x): each branch stays finite on the other's lanes (no
// exp overflow, no inf - inf or 0 * inf at x = +-inf), so the blend is exact.
template <class T>
ITNET_HD T elementwise_feature(FeatureMap fm, T x) {
  if (fm == FeatureMap::EluPlusOne) {
    const T s = Ops<T>::step(x);
    return s * (Ops<T>::relu(x) + T(1)) + (T(1) - s) * Ops<T>::exp(T(0) - Ops<T>::relu(T(0) - x));
  }
  if (fm == FeatureMap::Relu) return Ops<T>::relu(x);
  return x;
}

// d phi / d x of the elementwise maps (torch's conventions at 0: relu'(0) = 0,
// elu'(0) = exp(0) = 1).
template <class T>
ITNET_HD T elementwise_feature_grad(FeatureMap fm, T x) {
  if (fm == FeatureMap::EluPlusOne) {
    const T s = Ops<T>::step(x);
    return s + (T(1) - s) * Ops<T>::exp(T(0) - Ops<T>::relu(T(0) - x));
  }
  if (fm == FeatureMap::Relu) return Ops<T>::step(x);
  return T(1);
}

// Dk^(-1/4): the FAVOR+ input scale.
template <class T>
ITNET_HD T favor_input_scale(int64_t Dk) {
  return T(1) / ::sqrt(::sqrt(T(Dk)));
}

// 1 / sqrt(F): the FAVOR+ feature normalization.
template <class T>
ITNET_HD T favor_feature_scale(int64_t F) {
  return T(1) / ::sqrt(T(F));
}

// phi_r from the exponent e_r and the stabilizer c.
template <class T>
ITNET_HD T favor_feature(T e, T c, T feature_scale) {
  return Ops<T>::exp(e - c) * feature_scale;
}

// Softmax normalization. A row is cut when |den| <= eps (no key, a relu
// feature row of zeros): it outputs exactly 0 and passes no gradient, never
// NaN. Every other row is kept, a NaN denominator included, so that a NaN in
// the inputs shows in the output as in the dense op instead of zeroing rows.
// Kept rows divide by den, never multiply by 1 / den: features far below the
// key stabilizer give tiny denominators whose inverse overflows float32 while
// num / den is finite.
template <class T>
ITNET_HD bool row_kept(T den, T eps) {
  return !(den <= eps && den >= -eps);
}

// Backward of out = num / den for a kept row, with g = dL/d out:
//   dL/d num = g / den,   dL/d den = -(g . out) / den = -((g . num) / den) / den
// (divided twice rather than by den^2, which underflows first).
template <class T>
ITNET_HD T denominator_grad(T g_dot_num, T den) {
  return -(g_dot_num / den) / den;
}

}  // namespace lowrank
}  // namespace itnet
