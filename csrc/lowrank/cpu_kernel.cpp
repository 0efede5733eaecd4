// Vectorized CPU kernels of the low-rank op (design in cpu_kernel.h), compiled
// once per CPU capability (MULTI_ARCH_SOURCES in setup.py). Rows are
// featurized kChunk at a time into a small buffer (the features never exist
// as a (B, H, N, F) tensor); the lanes run over Dv in the contractions and
// over Dk in the FAVOR+ projection.
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/cpu_vec.h"
#include "lowrank/cpu_kernel.h"
#include "lowrank/feature.h"

namespace itnet {
namespace lowrank {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;
using itnet::CPU_CAPABILITY::hsum;
using itnet::CPU_CAPABILITY::load_n;
using itnet::CPU_CAPABILITY::store;

constexpr int64_t kChunk = 64;  // rows featurized at a time

// ---- small vector primitives (n contiguous elements) -----------------------------------------

template <class T>
T dot(const T* a, const T* b, int64_t n) {
  using V = Vectorized<T>;
  V acc(T(0));
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) acc = at::vec::fmadd(V::loadu(a + i), V::loadu(b + i), acc);
  if (i < n) acc = at::vec::fmadd(load_n(a + i, n - i), load_n(b + i, n - i), acc);
  return hsum(acc);
}

// y += a * x
template <class T>
void axpy(T* y, T a, const T* x, int64_t n) {
  using V = Vectorized<T>;
  const V va(a);
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size())
    at::vec::fmadd(va, V::loadu(x + i), V::loadu(y + i)).store(y + i);
  if (i < n) store(at::vec::fmadd(va, load_n(x + i, n - i), load_n(y + i, n - i)), y + i, n - i);
}

// ---- featurization ------------------------------------------------------------------------------

// What featurizing needs: the map, the sizes and the projection.
template <class T>
struct Featurizer {
  FeatureMap fmap;
  int64_t Dk, F;
  const T* W;  // (F, Dk), Favor only
  T in_scale, feat_scale;

  Featurizer(FeatureMap fm, int64_t Dk_, int64_t F_, const void* W_)
      : fmap(fm), Dk(Dk_), F(F_), W(static_cast<const T*>(W_)),
        in_scale(favor_input_scale<T>(Dk_)), feat_scale(favor_feature_scale<T>(F_)) {}

  bool favor() const { return fmap == FeatureMap::Favor; }

  // FAVOR+ exponents e (rows, F) of rows x (rows, Dk); xs (Dk) is scratch.
  void exponents(const T* x, int64_t rows, T* e, T* xs) const {
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * Dk;
      for (int64_t d = 0; d < Dk; ++d) xs[d] = xr[d] * in_scale;
      const T half_sq = T(0.5) * dot(xs, xs, Dk);
      T* er = e + r * F;
      for (int64_t f = 0; f < F; ++f) er[f] = dot(W + f * Dk, xs, Dk) - half_sq;
    }
  }

  // phi (rows, F) of rows x. Favor: stab = Row subtracts each row's max
  // exponent, otherwise the constant c (0 for None). buf: rows * F + Dk scratch
  // when Favor (phi may alias the first rows * F of buf).
  void features(const T* x, int64_t rows, T* phi, Stabilizer stab, T c, T* xs) const {
    if (!favor()) {
      for (int64_t r = 0; r < rows * F; ++r) phi[r] = elementwise_feature(fmap, x[r]);
      return;
    }
    exponents(x, rows, phi, xs);
    for (int64_t r = 0; r < rows; ++r) {
      T* er = phi + r * F;
      T cr = c;
      if (stab == Stabilizer::Row) {
        cr = neg_inf<T>();
        for (int64_t f = 0; f < F; ++f) cr = std::max(cr, er[f]);
        cr = softmax_shift(cr);
      }
      for (int64_t f = 0; f < F; ++f) er[f] = favor_feature(er[f], cr, feat_scale);
    }
  }

  // dx (Dk) of one row from dphi (F), given the row x and its features phi.
  // Favor: g (F) is scratch.
  void backward(const T* x, const T* phi, const T* dphi, T* dx, T* g) const {
    if (!favor()) {
      for (int64_t d = 0; d < Dk; ++d) dx[d] = dphi[d] * elementwise_feature_grad(fmap, x[d]);
      return;
    }
    T G = T(0);
    for (int64_t f = 0; f < F; ++f) {
      g[f] = dphi[f] * phi[f];
      G += g[f];
    }
    // dx = s (sum_f g_f W_f - x' G), x' = s x
    for (int64_t d = 0; d < Dk; ++d) dx[d] = -(x[d] * in_scale) * G;
    for (int64_t f = 0; f < F; ++f) axpy(dx, g[f], W + f * Dk, Dk);
    for (int64_t d = 0; d < Dk; ++d) dx[d] *= in_scale;
  }
};

template <class T>
Featurizer<T> featurizer(const LowRankParams& p) {
  return Featurizer<T>(p.fmap, p.Dk, p.F, p.W);
}

// ---- the transform ------------------------------------------------------------------------------

template <class T>
void keys(const LowRankParams& p, int64_t bh, int64_t j0, int64_t j1, T* S, T* z, T* m_out) {
  const auto fz = featurizer<T>(p);
  const int64_t F = p.F, Dv = p.Dv, Dk = p.Dk;
  const T* k = static_cast<const T*>(p.k) + bh * p.M * Dk;
  const T* v = static_cast<const T*>(p.v) + bh * p.M * Dv;
  const bool online = p.key_stabilizer() == Stabilizer::Slice;
  std::vector<T> psi(kChunk * F), xs(Dk);
  T m = online ? neg_inf<T>() : T(0);
  for (int64_t c0 = j0; c0 < j1; c0 += kChunk) {
    const int64_t rows = std::min(kChunk, j1 - c0);
    if (online) {
      // online stabilizer: rescale what was summed when the running max grows
      fz.exponents(k + c0 * Dk, rows, psi.data(), xs.data());
      T cm = m;
      for (int64_t r = 0; r < rows * F; ++r) cm = std::max(cm, psi[r]);
      if (cm > m) {
        const T scale = softmax_rescale(m, cm);
        for (int64_t r = 0; r < F * Dv; ++r) S[r] *= scale;
        for (int64_t f = 0; f < F; ++f) z[f] *= scale;
        m = cm;
      }
      for (int64_t r = 0; r < rows * F; ++r) psi[r] = favor_feature(psi[r], m, fz.feat_scale);
    } else {
      fz.features(k + c0 * Dk, rows, psi.data(), Stabilizer::None, T(0), xs.data());
    }
    for (int64_t f = 0; f < F; ++f) {
      T* Sf = S + f * Dv;
      T zf = T(0);
      for (int64_t r = 0; r < rows; ++r) {
        const T a = psi[r * F + f];
        zf += a;
        axpy(Sf, a, v + (c0 + r) * Dv, Dv);
      }
      z[f] += zf;
    }
  }
  *m_out = m;
}

template <class T>
void queries(const LowRankParams& p, int64_t bh, int64_t i0, int64_t i1, const T* S,
             const T* z) {
  const auto fz = featurizer<T>(p);
  const int64_t F = p.F, Dv = p.Dv, Dk = p.Dk;
  const T* q = static_cast<const T*>(p.q) + bh * p.N * Dk;
  T* out = static_cast<T*>(p.out) + bh * p.N * Dv;
  const T eps = static_cast<T>(p.eps);
  std::vector<T> phi(kChunk * F), xs(Dk);
  for (int64_t c0 = i0; c0 < i1; c0 += kChunk) {
    const int64_t rows = std::min(kChunk, i1 - c0);
    fz.features(q + c0 * Dk, rows, phi.data(), p.query_stabilizer(), T(0), xs.data());
    for (int64_t r = 0; r < rows; ++r) {
      const T* ph = phi.data() + r * F;
      T* o = out + (c0 + r) * Dv;
      std::fill(o, o + Dv, T(0));
      for (int64_t f = 0; f < F; ++f) axpy(o, ph[f], S + f * Dv, Dv);
      if (p.softmax) {
        const T inv = inverse_denominator(dot(ph, z, F), eps);
        for (int64_t d = 0; d < Dv; ++d) o[d] *= inv;
      }
    }
  }
}

template <class T>
void queries_bwd(const LowRankBwdParams& p, int64_t bh, int64_t i0, int64_t i1, const T* S,
                 const T* z, T* dS, T* dz) {
  const auto fz = featurizer<T>(p);
  const int64_t F = p.F, Dv = p.Dv, Dk = p.Dk;
  const T* q = static_cast<const T*>(p.q) + bh * p.N * Dk;
  const T* dout = static_cast<const T*>(p.dout) + bh * p.N * Dv;
  T* dq = static_cast<T*>(p.dq) + bh * p.N * Dk;
  const T eps = static_cast<T>(p.eps);
  std::vector<T> phi(kChunk * F), xs(Dk), num(Dv), dn(Dv), dphi(F), g(F);
  for (int64_t c0 = i0; c0 < i1; c0 += kChunk) {
    const int64_t rows = std::min(kChunk, i1 - c0);
    fz.features(q + c0 * Dk, rows, phi.data(), p.query_stabilizer(), T(0), xs.data());
    for (int64_t r = 0; r < rows; ++r) {
      const T* ph = phi.data() + r * F;
      const T* gr = dout + (c0 + r) * Dv;
      T dden = T(0);
      if (p.softmax) {
        // recompute num, den (cheaper than saving them): out = num * inv
        const T inv = inverse_denominator(dot(ph, z, F), eps);
        std::fill(num.begin(), num.end(), T(0));
        for (int64_t f = 0; f < F; ++f) axpy(num.data(), ph[f], S + f * Dv, Dv);
        dden = denominator_grad(dot(gr, num.data(), Dv) * inv, inv);
        for (int64_t d = 0; d < Dv; ++d) dn[d] = gr[d] * inv;
      } else {
        std::copy(gr, gr + Dv, dn.begin());
      }
      for (int64_t f = 0; f < F; ++f) {
        dphi[f] = dot(S + f * Dv, dn.data(), Dv) + z[f] * dden;
        axpy(dS + f * Dv, ph[f], dn.data(), Dv);
        dz[f] += ph[f] * dden;
      }
      fz.backward(q + (c0 + r) * Dk, ph, dphi.data(), dq + (c0 + r) * Dk, g.data());
    }
  }
}

template <class T>
void keys_bwd(const LowRankBwdParams& p, int64_t bh, int64_t j0, int64_t j1, T c, const T* dS,
              const T* dz) {
  const auto fz = featurizer<T>(p);
  const int64_t F = p.F, Dv = p.Dv, Dk = p.Dk;
  const T* k = static_cast<const T*>(p.k) + bh * p.M * Dk;
  const T* v = static_cast<const T*>(p.v) + bh * p.M * Dv;
  T* dk = static_cast<T*>(p.dk) + bh * p.M * Dk;
  T* dv = static_cast<T*>(p.dv) + bh * p.M * Dv;
  std::vector<T> psi(kChunk * F), xs(Dk), dpsi(F), g(F);
  for (int64_t c0 = j0; c0 < j1; c0 += kChunk) {
    const int64_t rows = std::min(kChunk, j1 - c0);
    // the forward's key features: stabilized by the slice's c (a constant)
    fz.features(k + c0 * Dk, rows, psi.data(), Stabilizer::None, c, xs.data());
    for (int64_t r = 0; r < rows; ++r) {
      const T* ps = psi.data() + r * F;
      const T* vr = v + (c0 + r) * Dv;
      T* dvr = dv + (c0 + r) * Dv;
      std::fill(dvr, dvr + Dv, T(0));
      for (int64_t f = 0; f < F; ++f) {
        dpsi[f] = dot(dS + f * Dv, vr, Dv) + dz[f];
        axpy(dvr, ps[f], dS + f * Dv, Dv);
      }
      fz.backward(k + (c0 + r) * Dk, ps, dpsi.data(), dk + (c0 + r) * Dk, g.data());
    }
  }
}

// ---- the features op (causal path) ----------------------------------------------------------------

template <class T>
Featurizer<T> featurizer(const FeatureParams& p) {
  return Featurizer<T>(p.fmap, p.Dk, p.F, p.W);
}

template <class T>
void features(const FeatureParams& p, int64_t s, int64_t r0, int64_t r1, T c) {
  const auto fz = featurizer<T>(p);
  const T* x = static_cast<const T*>(p.x) + s * p.n * p.Dk;
  T* phi = static_cast<T*>(p.phi) + s * p.n * p.F;
  std::vector<T> xs(p.Dk);
  const Stabilizer stab = p.stab == Stabilizer::Row ? Stabilizer::Row : Stabilizer::None;
  fz.features(x + r0 * p.Dk, r1 - r0, phi + r0 * p.F, stab,
              p.stab == Stabilizer::Slice ? c : T(0), xs.data());
}

template <class T>
void features_bwd(const FeatureParams& p, int64_t s, int64_t r0, int64_t r1, T c) {
  const auto fz = featurizer<T>(p);
  const int64_t Dk = p.Dk, F = p.F;
  const T* x = static_cast<const T*>(p.x) + s * p.n * Dk;
  const T* dphi = static_cast<const T*>(p.dphi) + s * p.n * F;
  T* dx = static_cast<T*>(p.dx) + s * p.n * Dk;
  const Stabilizer stab = p.stab == Stabilizer::Row ? Stabilizer::Row : Stabilizer::None;
  std::vector<T> phi(kChunk * F), xs(Dk), g(F);
  for (int64_t c0 = r0; c0 < r1; c0 += kChunk) {
    const int64_t rows = std::min(kChunk, r1 - c0);
    fz.features(x + c0 * Dk, rows, phi.data(), stab, p.stab == Stabilizer::Slice ? c : T(0),
                xs.data());
    for (int64_t r = 0; r < rows; ++r)
      fz.backward(x + (c0 + r) * Dk, phi.data() + r * F, dphi + (c0 + r) * F,
                  dx + (c0 + r) * Dk, g.data());
  }
}

template <class T>
T exponent_max(const FeatureParams& p, int64_t s, int64_t r0, int64_t r1) {
  const auto fz = featurizer<T>(p);
  const T* x = static_cast<const T*>(p.x) + s * p.n * p.Dk;
  std::vector<T> e(kChunk * p.F), xs(p.Dk);
  T m = neg_inf<T>();
  for (int64_t c0 = r0; c0 < r1; c0 += kChunk) {
    const int64_t rows = std::min(kChunk, r1 - c0);
    fz.exponents(x + c0 * p.Dk, rows, e.data(), xs.data());
    for (int64_t r = 0; r < rows * p.F; ++r) m = std::max(m, e[r]);
  }
  return m;
}

template <class T>
CpuKernels<T> kernels() {
  return {&keys<T>, &queries<T>, &queries_bwd<T>, &keys_bwd<T>, &features<T>, &features_bwd<T>,
          &exponent_max<T>};
}

CpuKernelTable kernel_table() { return {kernels<float>(), kernels<double>()}; }

}  // namespace CPU_CAPABILITY
}  // namespace lowrank
}  // namespace itnet
