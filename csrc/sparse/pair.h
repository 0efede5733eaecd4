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
// log-weight gradient dlw (common/pair_grad.h, shared with the dense kernels).
#pragma once

#include <cstdint>

#include "common/math.h"
#include "common/pair_grad.h"
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

}  // namespace sparse
}  // namespace itnet
