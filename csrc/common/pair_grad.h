// Per-pair backward math of the pair ops, written once for the dense and the
// sparse kernels, CPU and CUDA (scalars or SIMD lanes through Ops<T>, see
// common/math.h). A pair with logit s (every term, log-weights included in
// softmax mode) and weight w (`none` mode; 1 without weights) contributes
//   softmax: a = exp(s - lse)   none: a = s w
// to its query's output, a v_j; the backward turns dP = <dO_i, v_j> into the
// logit gradient ds and the weight gradient.
#pragma once

#include <cstdint>

#include "common/macros.h"
#include "common/math.h"

namespace itnet {

// `none`: the weight w = exp(lw) of a pair with log-weight lw.
template <class T>
ITNET_HD T pair_weight(T lw) {
  return Ops<T>::exp(lw);
}

// softmax: ds = d/d(log w) = a (dP - delta), delta = rowsum(dO * O) - grad_lse.
template <class T>
ITNET_HD T softmax_logit_grad(T a, T dP, T delta) {
  return a * (dP - delta);
}

// none: y = sum s w v, so ds = w dP, d/dw = s dP and d/d(log w) = s w dP.
template <class T>
ITNET_HD T none_logit_grad(T w, T dP) {
  return w * dP;
}
template <class T>
ITNET_HD T none_weight_grad(T s, T dP) {
  return dP * s;
}
template <class T>
ITNET_HD T none_log_weight_grad(T s, T w, T dP) {
  return s * w * dP;
}

template <class T>
ITNET_HD T dot(const T* x, const T* y, int64_t n) {
  T acc = T(0);
  for (int64_t d = 0; d < n; ++d) acc += x[d] * y[d];
  return acc;
}

// What one pair contributes in the backward: the weight a its value row got,
// the logit gradient ds, and dw: d/d(log w) in softmax mode (the log-weight
// is a logit bias), d/dw in `none` mode.
template <class T>
struct PairGrad {
  T a, ds, dw;
};

// shift: softmax_bwd_shift(lse_i) (common/math.h); delta as above. Softmax
// mode ignores w (it is inside s).
template <class T>
ITNET_HD PairGrad<T> pair_grad(bool softmax, T s, T w, T dP, T shift, T delta) {
  PairGrad<T> g;
  if (softmax) {
    g.a = Ops<T>::exp(s - shift);
    g.ds = softmax_logit_grad(g.a, dP, delta);
    g.dw = g.ds;
  } else {
    g.a = s * w;
    g.ds = none_logit_grad(w, dP);
    g.dw = none_weight_grad(s, dP);
  }
  return g;
}

}  // namespace itnet
