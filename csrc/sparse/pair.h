// Per-pair math of the sparse integral transform, written once for the CPU
// and CUDA kernels (scalar or SIMD lanes through Ops<T>, see common/math.h).
//
// A listed pair (i, j) with log-weight lw takes part iff it is present
// (lw != -inf) and its offset p_j - p_i lies inside the window (if any): the
// dense op's support restricted to the listed pairs. Its logit l (the dense
// op's terms) becomes
//   softmax: z = l + lw, a = exp(z - lse)            (self-normalized estimate)
//   none:    a = l * exp(lw)                          (unbiased estimate)
// and the backward turns dP = <dO_i, v_j> into the logit gradient dl and the
// log-weight gradient dlw.
#pragma once

#include <cstdint>

#include "common/math.h"
#include "common/support.h"

namespace itnet {
namespace sparse {

// The listed pair's row of the position arrays decides; null positions (no
// window) mean every present pair takes part.
ITNET_HD bool pair_in_window(const Window& w, const double* pq, const double* pk) {
  return w.dims == 0 || window_allows(w, pq, pk);
}

template <class T>
ITNET_HD bool pair_present(T lw) {
  return !(lw == neg_inf<T>());
}

// `none`: the pair's weight w = exp(lw) (1 without log-weights).
template <class T>
ITNET_HD T pair_weight(T lw) {
  return Ops<T>::exp(lw);
}

// softmax: dl = dlw = a (dP - delta), delta = rowsum(dO * O) - grad_lse.
template <class T>
ITNET_HD T softmax_logit_grad(T a, T dP, T delta) {
  return a * (dP - delta);
}

// none: y = sum l w v, so dl = w dP and dlw = d(l e^lw)/dlw dP = l w dP.
template <class T>
ITNET_HD T none_logit_grad(T w, T dP) {
  return w * dP;
}
template <class T>
ITNET_HD T none_log_weight_grad(T l, T w, T dP) {
  return l * w * dP;
}

}  // namespace sparse
}  // namespace itnet
