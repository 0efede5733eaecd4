// Vectorized CPU kernels of the low-rank op (design in cpu_kernel.h), compiled
// once per CPU capability (MULTI_ARCH_SOURCES in setup.py). Rows are
// featurized kCpuChunk at a time into small buffers (the features never exist
// as a (B, H, N, F) tensor), and every contraction of a chunk is one call of
// the dense kernel's register-blocked gemm: the FAVOR+ projection, Psi^T [V, 1],
// Phi Sx, and their transposes in the backward. The feature maps run on SIMD
// lanes through the shared formulas of feature.h.
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/cpu_gemm.h"
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
using itnet::CPU_CAPABILITY::gemm;

constexpr int64_t kChunk = kCpuChunk;

// ---- lane loops over n contiguous elements --------------------------------------------------------

// y = f(x) lane by lane (y may alias x)
template <class T, class Fn>
void map_lanes(const T* x, T* y, int64_t n, const Fn& f) {
  using V = Vectorized<T>;
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) f(V::loadu(x + i)).store(y + i);
  if (i < n) store(f(load_n(x + i, n - i)), y + i, n - i);
}

// y = f(x, y) lane by lane
template <class T, class Fn>
void zip_lanes(const T* x, T* y, int64_t n, const Fn& f) {
  using V = Vectorized<T>;
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) f(V::loadu(x + i), V::loadu(y + i)).store(y + i);
  if (i < n) store(f(load_n(x + i, n - i), load_n(y + i, n - i)), y + i, n - i);
}

template <class T>
T dot(const T* a, const T* b, int64_t n) {
  using V = Vectorized<T>;
  V acc(T(0));
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size())
    acc = at::vec::fmadd(V::loadu(a + i), V::loadu(b + i), acc);
  if (i < n) acc = at::vec::fmadd(load_n(a + i, n - i), load_n(b + i, n - i), acc);
  return hsum(acc);
}

template <class T>
T max_of(const T* x, int64_t n, T init) {
  T m = init;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

// ---- featurization of a chunk of rows ----------------------------------------------------------------

// Per-thread buffers of one chunk.
template <class T>
struct Scratch {
  std::vector<T> feat, xs, ext, grad;  // (chunk, F), (chunk, Dk), (chunk, Dv + 1), (chunk, F)
  std::vector<T> sq;                   // (chunk): |x'|^2 / 2 per row
  Scratch(int64_t F, int64_t Dk, int64_t E)
      : feat(kChunk * F), xs(kChunk * Dk), ext(kChunk * E), grad(kChunk * F), sq(kChunk) {}
};

template <class T>
struct Featurizer {
  FeatureMap fmap;
  int64_t Dk, F;
  const T* W;   // (F, Dk), Favor only
  const T* Wt;  // (Dk, F)
  T in_scale, feat_scale;

  Featurizer(FeatureMap fm, int64_t Dk_, int64_t F_, const void* W_, const void* Wt_)
      : fmap(fm), Dk(Dk_), F(F_), W(static_cast<const T*>(W_)), Wt(static_cast<const T*>(Wt_)),
        in_scale(favor_input_scale<T>(Dk_)), feat_scale(favor_feature_scale<T>(F_)) {}

  bool favor() const { return fmap == FeatureMap::Favor; }

  // FAVOR+ exponents e (rows, F) = X' W^T - |x'|^2 / 2 of rows x (rows, Dk);
  // leaves X' = s X in sc.xs and |x'|^2 / 2 in sc.sq for the backward.
  void exponents(const T* x, int64_t rows, T* e, Scratch<T>& sc) const {
    const T s = in_scale;
    map_lanes(x, sc.xs.data(), rows * Dk, [s](auto a) { return a * decltype(a)(s); });
    gemm<T>(rows, F, Dk, T(1), sc.xs.data(), Dk, 1, Wt, F, false, e, F);
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = sc.xs.data() + r * Dk;
      const T h = T(0.5) * dot(xr, xr, Dk);
      sc.sq[r] = h;
      map_lanes(e + r * F, e + r * F, F, [h](auto a) { return a - decltype(a)(h); });
    }
  }

  // phi = exp(e - c) / sqrt(F) in place, c per row (Row) or the constant c.
  void exp_features(T* e, int64_t rows, Stabilizer stab, T c) const {
    const T fs = feat_scale;
    for (int64_t r = 0; r < rows; ++r) {
      T* er = e + r * F;
      const T cr = stab == Stabilizer::Row ? softmax_shift(max_of(er, F, neg_inf<T>())) : c;
      map_lanes(er, er, F, [cr, fs](auto a) {
        using V = decltype(a);
        return favor_feature(a, V(cr), V(fs));
      });
    }
  }

  // phi (rows, F) of rows x (rows, Dk).
  void features(const T* x, int64_t rows, T* phi, Stabilizer stab, T c, Scratch<T>& sc) const {
    if (!favor()) {
      const FeatureMap fm = fmap;
      map_lanes(x, phi, rows * F, [fm](auto a) { return elementwise_feature(fm, a); });
      return;
    }
    exponents(x, rows, phi, sc);
    exp_features(phi, rows, stab, c);
  }

  // dx (rows, Dk) from dphi (rows, F), given x and phi = features(x) (the
  // stabilizer is a constant). Favor reads sc.xs (X' of these rows, left by
  // features()) and overwrites dphi with g = dphi * phi.
  void backward(const T* x, const T* phi, T* dphi, T* dx, int64_t rows, Scratch<T>& sc) const {
    if (!favor()) {
      const FeatureMap fm = fmap;
      map_lanes(x, dx, rows * Dk, [fm](auto a) { return elementwise_feature_grad(fm, a); });
      zip_lanes(dphi, dx, rows * Dk, [](auto g, auto d) { return g * d; });
      return;
    }
    zip_lanes(phi, dphi, rows * F, [](auto p, auto g) { return g * p; });
    // dx = s (G W - x' rowsum(G))
    gemm<T>(rows, Dk, F, T(1), dphi, F, 1, W, Dk, false, dx, Dk);
    const T s = in_scale;
    for (int64_t r = 0; r < rows; ++r) {
      T G = T(0);
      for (int64_t f = 0; f < F; ++f) G += dphi[r * F + f];
      zip_lanes(sc.xs.data() + r * Dk, dx + r * Dk, Dk, [G, s](auto xs, auto d) {
        using V = decltype(xs);
        return (d - xs * V(G)) * V(s);
      });
    }
  }
};

template <class T>
Featurizer<T> featurizer(const LowRankParams& p) {
  return Featurizer<T>(p.fmap, p.Dk, p.F, p.W, p.Wt);
}

template <class T>
Featurizer<T> featurizer(const FeatureParams& p) {
  return Featurizer<T>(p.fmap, p.Dk, p.F, p.W, p.Wt);
}

// [v, 1] rows into ext (rows, Dv + 1)
template <class T>
void extend_values(const T* v, int64_t rows, int64_t Dv, T* ext) {
  for (int64_t r = 0; r < rows; ++r) {
    std::copy(v + r * Dv, v + (r + 1) * Dv, ext + r * (Dv + 1));
    ext[r * (Dv + 1) + Dv] = T(1);
  }
}

// ---- the transform ------------------------------------------------------------------------------

template <class T>
void keys(const LowRankParams& p, int64_t bh, int64_t j0, int64_t j1, T* Sx, T* m_out) {
  const auto fz = featurizer<T>(p);
  const int64_t F = p.F, Dv = p.Dv, Dk = p.Dk, E = Dv + 1;
  const T* k = static_cast<const T*>(p.k) + bh * p.M * Dk;
  const T* v = static_cast<const T*>(p.v) + bh * p.M * Dv;
  const bool online = p.key_stabilizer() == Stabilizer::Slice;
  Scratch<T> sc(F, Dk, E);
  T* psi = sc.feat.data();
  T m = online ? neg_inf<T>() : T(0);
  for (int64_t c0 = j0; c0 < j1; c0 += kChunk) {
    const int64_t rows = std::min(kChunk, j1 - c0);
    if (online) {
      // online stabilizer: rescale what was summed when the running max grows
      fz.exponents(k + c0 * Dk, rows, psi, sc);
      const T cm = max_of(psi, rows * F, m);
      if (cm > m) {
        const T scale = softmax_rescale(m, cm);
        map_lanes(Sx, Sx, F * E, [scale](auto a) { return a * decltype(a)(scale); });
        m = cm;
      }
      fz.exp_features(psi, rows, Stabilizer::None, m);
    } else {
      fz.features(k + c0 * Dk, rows, psi, Stabilizer::None, T(0), sc);
    }
    extend_values(v + c0 * Dv, rows, Dv, sc.ext.data());
    // Sx (F, E) += Psi^T (F, rows) [V, 1] (rows, E)
    gemm<T>(F, E, rows, T(1), psi, 1, F, sc.ext.data(), E, true, Sx, E);
  }
  *m_out = m;
}

// Nx (rows, Dv + 1) = Phi Sx: each row's numerator and denominator.
template <class T>
void numerators(const T* phi, int64_t rows, const T* Sx, int64_t F, int64_t E, T* Nx) {
  gemm<T>(rows, E, F, T(1), phi, F, 1, Sx, E, false, Nx, E);
}

template <class T>
void queries(const LowRankParams& p, int64_t bh, int64_t i0, int64_t i1, const T* Sx) {
  const auto fz = featurizer<T>(p);
  const int64_t F = p.F, Dv = p.Dv, Dk = p.Dk, E = Dv + 1;
  const T* q = static_cast<const T*>(p.q) + bh * p.N * Dk;
  T* out = static_cast<T*>(p.out) + bh * p.N * Dv;
  const T eps = static_cast<T>(p.eps);
  Scratch<T> sc(F, Dk, E);
  for (int64_t c0 = i0; c0 < i1; c0 += kChunk) {
    const int64_t rows = std::min(kChunk, i1 - c0);
    fz.features(q + c0 * Dk, rows, sc.feat.data(), p.query_stabilizer(), T(0), sc);
    numerators(sc.feat.data(), rows, Sx, F, E, sc.ext.data());
    for (int64_t r = 0; r < rows; ++r) {
      const T* nx = sc.ext.data() + r * E;
      T* o = out + (c0 + r) * Dv;
      const T den = nx[Dv];
      if (!p.softmax) {
        std::copy(nx, nx + Dv, o);
      } else if (row_kept(den, eps)) {
        map_lanes(nx, o, Dv, [den](auto a) { return a / decltype(a)(den); });
      } else {
        std::fill(o, o + Dv, T(0));
      }
    }
  }
}

template <class T>
void queries_bwd(const LowRankBwdParams& p, int64_t bh, int64_t i0, int64_t i1, const T* Sx,
                 const T* Sxt, T* dSx) {
  const auto fz = featurizer<T>(p);
  const int64_t F = p.F, Dv = p.Dv, Dk = p.Dk, E = Dv + 1;
  const T* q = static_cast<const T*>(p.q) + bh * p.N * Dk;
  const T* dout = static_cast<const T*>(p.dout) + bh * p.N * Dv;
  T* dq = static_cast<T*>(p.dq) + bh * p.N * Dk;
  const T eps = static_cast<T>(p.eps);
  Scratch<T> sc(F, Dk, E);
  T* phi = sc.feat.data();
  T* nx = sc.ext.data();  // numerators, then their gradients [dn, dden]
  for (int64_t c0 = i0; c0 < i1; c0 += kChunk) {
    const int64_t rows = std::min(kChunk, i1 - c0);
    fz.features(q + c0 * Dk, rows, phi, p.query_stabilizer(), T(0), sc);
    if (p.softmax) numerators(phi, rows, Sx, F, E, nx);  // recomputed, not saved
    for (int64_t r = 0; r < rows; ++r) {
      const T* g = dout + (c0 + r) * Dv;
      T* row = nx + r * E;
      if (p.softmax) {
        // out = num / den: dn = g / den, dden = -(g . out) / den; 0 for a cut row
        const T den = row[Dv];
        if (row_kept(den, eps)) {
          const T dden = denominator_grad(dot(g, row, Dv), den);
          map_lanes(g, row, Dv, [den](auto a) { return a / decltype(a)(den); });
          row[Dv] = dden;
        } else {
          std::fill(row, row + E, T(0));
        }
      } else {
        std::copy(g, g + Dv, row);
        row[Dv] = T(0);
      }
    }
    // dPhi (rows, F) = [dn, dden] Sx^T;  dSx (F, E) += Phi^T [dn, dden]
    gemm<T>(rows, F, E, T(1), nx, E, 1, Sxt, F, false, sc.grad.data(), F);
    gemm<T>(F, E, rows, T(1), phi, 1, F, nx, E, true, dSx, E);
    fz.backward(q + c0 * Dk, phi, sc.grad.data(), dq + c0 * Dk, rows, sc);
  }
}

template <class T>
void keys_bwd(const LowRankBwdParams& p, int64_t bh, int64_t j0, int64_t j1, T c, const T* dSx,
              const T* dSxt) {
  const auto fz = featurizer<T>(p);
  const int64_t F = p.F, Dv = p.Dv, Dk = p.Dk, E = Dv + 1;
  const T* k = static_cast<const T*>(p.k) + bh * p.M * Dk;
  const T* v = static_cast<const T*>(p.v) + bh * p.M * Dv;
  T* dk = static_cast<T*>(p.dk) + bh * p.M * Dk;
  T* dv = static_cast<T*>(p.dv) + bh * p.M * Dv;
  Scratch<T> sc(F, Dk, E);
  T* psi = sc.feat.data();
  for (int64_t c0 = j0; c0 < j1; c0 += kChunk) {
    const int64_t rows = std::min(kChunk, j1 - c0);
    // the forward's key features: stabilized by the slice's constant c
    fz.features(k + c0 * Dk, rows, psi, Stabilizer::None, c, sc);
    extend_values(v + c0 * Dv, rows, Dv, sc.ext.data());
    // dPsi (rows, F) = [V, 1] dSx^T;  dV (rows, Dv) = Psi dS
    gemm<T>(rows, F, E, T(1), sc.ext.data(), E, 1, dSxt, F, false, sc.grad.data(), F);
    gemm<T>(rows, Dv, F, T(1), psi, F, 1, dSx, E, false, dv + c0 * Dv, Dv);
    fz.backward(k + c0 * Dk, psi, sc.grad.data(), dk + c0 * Dk, rows, sc);
  }
}

// ---- the features op (causal path) ----------------------------------------------------------------

// The op's stabilizer modes as the featurizer's (Slice: the slice's constant c).
inline Stabilizer row_mode(Stabilizer s) {
  return s == Stabilizer::Row ? Stabilizer::Row : Stabilizer::None;
}

template <class T>
void features(const FeatureParams& p, int64_t s, int64_t r0, int64_t r1, T c) {
  const auto fz = featurizer<T>(p);
  const T* x = static_cast<const T*>(p.x) + s * p.n * p.Dk;
  T* phi = static_cast<T*>(p.phi) + s * p.n * p.F;
  Scratch<T> sc(p.F, p.Dk, 1);
  const T cc = p.stab == Stabilizer::Slice ? c : T(0);
  for (int64_t c0 = r0; c0 < r1; c0 += kChunk) {
    const int64_t rows = std::min(kChunk, r1 - c0);
    fz.features(x + c0 * p.Dk, rows, phi + c0 * p.F, row_mode(p.stab), cc, sc);
  }
}

template <class T>
void features_bwd(const FeatureParams& p, int64_t s, int64_t r0, int64_t r1, T c) {
  const auto fz = featurizer<T>(p);
  const int64_t Dk = p.Dk, F = p.F;
  const T* x = static_cast<const T*>(p.x) + s * p.n * Dk;
  const T* dphi = static_cast<const T*>(p.dphi) + s * p.n * F;
  T* dx = static_cast<T*>(p.dx) + s * p.n * Dk;
  Scratch<T> sc(F, Dk, 1);
  const T cc = p.stab == Stabilizer::Slice ? c : T(0);
  for (int64_t c0 = r0; c0 < r1; c0 += kChunk) {
    const int64_t rows = std::min(kChunk, r1 - c0);
    fz.features(x + c0 * Dk, rows, sc.feat.data(), row_mode(p.stab), cc, sc);
    std::copy(dphi + c0 * F, dphi + (c0 + rows) * F, sc.grad.data());
    fz.backward(x + c0 * Dk, sc.feat.data(), sc.grad.data(), dx + c0 * Dk, rows, sc);
  }
}

template <class T>
T exponent_max(const FeatureParams& p, int64_t s, int64_t r0, int64_t r1) {
  const auto fz = featurizer<T>(p);
  const T* x = static_cast<const T*>(p.x) + s * p.n * p.Dk;
  Scratch<T> sc(p.F, p.Dk, 1);
  T m = neg_inf<T>();
  for (int64_t c0 = r0; c0 < r1; c0 += kChunk) {
    const int64_t rows = std::min(kChunk, r1 - c0);
    fz.exponents(x + c0 * p.Dk, rows, sc.feat.data(), sc);
    m = max_of(sc.feat.data(), rows * p.F, m);
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
