// The decay scan's per-step math, written once for the CPU kernels (scalar
// or at::vec lanes) and the CUDA kernels (float / double registers).
//
// One step is the affine map h -> e h + psi x with e = exp(a). The forward is
// the composition of these maps over time; the backward runs the adjoint
// recurrence g_{t-1} = e_t g_t + phi_{t-1} dy_{t-1} from the end, where
// g_t = dLoss/dh_t, and reads every gradient off (g_t, h_{t-1}, h_t).
#pragma once

#include "common/macros.h"

namespace itnet {
namespace scan {

// h_t from h_{t-1}: e * h + psi * x.
template <class V>
ITNET_HD V advance(const V& e, const V& h, const V& psi, const V& x) {
  return e * h + psi * x;
}

// An affine map h -> a h + b: the element of the parallel (block) scan.
template <class V>
struct Affine {
  V a, b;
};

// `first` then `second`: h -> second.a (first.a h + first.b) + second.b.
// Associative, not commutative; the identity is {1, 0}.
template <class V>
ITNET_HD Affine<V> then(const Affine<V>& first, const Affine<V>& second) {
  return {second.a * first.a, second.a * first.b + second.b};
}

// g_t = dLoss/dh_t: what reaches h_t from the future (carry = e_{t+1} g_{t+1},
// plus the final-state cotangent at t = T-1) and from y_t through phi_t.
template <class V>
ITNET_HD V state_grad(const V& carry, const V& phi, const V& dy) {
  return carry + phi * dy;
}

// dLoss/da_t = g_t * d h_t / d a_t = g_t e_t h_{t-1}. h_{t-1} (not the
// equivalent h_t - psi x, which cancels when the decay is strong).
template <class V>
ITNET_HD V log_decay_grad(const V& g, const V& e, const V& h_prev) {
  return g * e * h_prev;
}

// What g_t passes to h_{t-1}.
template <class V>
ITNET_HD V carry_back(const V& g, const V& e) {
  return e * g;
}

}  // namespace scan
}  // namespace itnet
