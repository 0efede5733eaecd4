// SIMD lanes for the CPU kernels of every strategy: the Ops<> specialisation
// that lets the shared formulas (common/math.h, scan/step.h) run on
// at::vec::Vectorized lanes, and masked load / store / horizontal-sum helpers.
//
// Included only by sources compiled once per CPU capability (DEFAULT, AVX2,
// AVX512; see MULTI_ARCH_SOURCES in setup.py) with the matching -m flags, so
// Vectorized<T> is the widest vector of that capability; the helpers live in
// the capability's namespace so the copies never collide at link time.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdint>

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

}  // namespace CPU_CAPABILITY
}  // namespace itnet
