// CPU entry points of the low-rank op (lowrank_fwd / lowrank_bwd) and of its
// features op (lowrank_features / lowrank_features_bwd, the causal path):
// checks and compute-dtype copies (lowrank/prepare.cpp), the parallel passes
// over (slice, row range) work items (cpu_kernel.h) and the fixed-order merges
// of their partial sums.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>

#include "common/capability.h"
#include "lowrank/cpu_kernel.h"
#include "lowrank/prepare.h"

namespace itnet {
namespace lowrank {
namespace {

template <class T>
CpuKernels<T> kernels();
template <>
CpuKernels<float> kernels<float>() {
  return ITNET_CPU_KERNEL_TABLE().f32;
}
template <>
CpuKernels<double> kernels<double>() {
  return ITNET_CPU_KERNEL_TABLE().f64;
}

// Below this many multiply-adds a pass runs on the calling thread: waking the
// pool costs more than a small problem (tens of microseconds, milliseconds
// on a loaded machine).
constexpr int64_t kSerialWork = int64_t(1) << 18;

// Runs fn(slice, split, begin, end) over `splits` row ranges of every slice;
// row_cost: multiply-adds per row, for the serial cutoff.
template <class Fn>
void for_ranges(int64_t slices, int64_t rows, int64_t splits, int64_t row_cost, const Fn& fn) {
  const int64_t items = slices * splits;
  const int64_t grain = slices * rows * row_cost < kSerialWork ? std::max<int64_t>(items, 1) : 1;
  at::parallel_for(0, items, grain, [&](int64_t b, int64_t e) {
    for (int64_t it = b; it < e; ++it) {
      const int64_t sl = it / splits, s = it % splits;
      const int64_t r0 = split_begin(rows, splits, s), r1 = split_begin(rows, splits, s + 1);
      if (r1 > r0) fn(sl, s, r0, r1);
    }
  });
}

// Multiply-adds per row of a pass: the features (FAVOR+: the projection) and
// the (F, Dv + 1) contraction.
int64_t row_cost(const LowRankParams& p) {
  return p.F * (p.Dv + 1) + (p.fmap == FeatureMap::Favor ? p.F * p.Dk : p.Dk);
}

// The merged key sums Sx = [S | z] (slices, F, Dv + 1) and the key stabilizer
// c (slices) of every slice (the forward's key pass; the backward runs it again
// rather than saving anything).
struct KeySums {
  at::Tensor Sx, c;
};

template <class T>
KeySums key_sums(const LowRankParams& p, const at::TensorOptions& opts) {
  const int64_t BH = p.slices(), E = p.Dv + 1;
  const int64_t ns = row_splits(BH, p.M, at::get_num_threads());
  at::Tensor Sx = at::zeros({BH, ns, p.F, E}, opts);
  // a split without keys keeps m = -inf (stabilized) or 0 and contributes 0
  at::Tensor m = at::full({BH, ns}, p.key_stabilizer() == Stabilizer::Slice
                                        ? -std::numeric_limits<double>::infinity() : 0.0, opts);
  T* Sp = Sx.data_ptr<T>();
  T* mp = m.data_ptr<T>();
  const CpuKernels<T> K = kernels<T>();
  for_ranges(BH, p.M, ns, row_cost(p), [&](int64_t bh, int64_t s, int64_t j0, int64_t j1) {
    const int64_t part = bh * ns + s;
    K.keys(p, bh, j0, j1, Sp + part * p.F * E, mp + part);
  });
  using at::indexing::Slice;
  const KeyState st = merge_key_state(Sx.index({Slice(), Slice(), Slice(), Slice(0, p.Dv)}),
                                      Sx.select(3, p.Dv), m);
  return {at::cat({st.S, st.z.unsqueeze(-1)}, -1).contiguous(), st.c};
}

template <class T>
void forward(LowRankParams& p, const at::TensorOptions& opts) {
  const KeySums ks = key_sums<T>(p, opts);
  const int64_t BH = p.slices(), E = p.Dv + 1;
  const T* Sx = ks.Sx.data_ptr<T>();
  const CpuKernels<T> K = kernels<T>();
  for_ranges(BH, p.N, row_splits(BH, p.N, at::get_num_threads()), row_cost(p),
             [&](int64_t bh, int64_t, int64_t i0, int64_t i1) {
               K.queries(p, bh, i0, i1, Sx + bh * p.F * E);
             });
}

at::Tensor lowrank_fwd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const c10::optional<at::Tensor>& projection, int64_t feature_map,
                           bool softmax, double eps) {
  Prepared pr = prepare(q, k, v, projection, feature_map, softmax, eps, "lowrank_fwd");
  LowRankParams& p = pr.params;
  at::Tensor out = at::empty({p.B, p.H, p.N, p.Dv}, pr.v.options());
  p.out = out.data_ptr();
  if (out.numel() > 0) {
    if (pr.compute == at::kDouble) forward<double>(p, out.options());
    else forward<float>(p, out.options());
  }
  return out.to(v.scalar_type());
}

template <class T>
void backward(LowRankBwdParams& p, const at::TensorOptions& opts) {
  const KeySums ks = key_sums<T>(p, opts);
  const int64_t BH = p.slices(), F = p.F, E = p.Dv + 1;
  const CpuKernels<T> K = kernels<T>();
  // queries: dq, and dSx = [dS | dz] per query range
  const int64_t nq = row_splits(BH, p.N, at::get_num_threads());
  at::Tensor dSx = at::zeros({BH, nq, F, E}, opts);
  {
    const at::Tensor Sxt = ks.Sx.transpose(1, 2).contiguous();
    const T* Sx = ks.Sx.data_ptr<T>();
    const T* St = Sxt.data_ptr<T>();
    T* dp = dSx.data_ptr<T>();
    for_ranges(BH, p.N, nq, 2 * row_cost(p), [&](int64_t bh, int64_t s, int64_t i0, int64_t i1) {
      K.queries_bwd(p, bh, i0, i1, Sx + bh * F * E, St + bh * F * E, dp + (bh * nq + s) * F * E);
    });
  }
  const at::Tensor dSum = dSx.sum(1);  // fixed order
  const at::Tensor dSumT = dSum.transpose(1, 2).contiguous();
  const T* dS = dSum.data_ptr<T>();
  const T* dSt = dSumT.data_ptr<T>();
  const T* c = ks.c.data_ptr<T>();
  for_ranges(BH, p.M, row_splits(BH, p.M, at::get_num_threads()), 2 * row_cost(p),
             [&](int64_t bh, int64_t, int64_t j0, int64_t j1) {
               K.keys_bwd(p, bh, j0, j1, c[bh], dS + bh * F * E, dSt + bh * F * E);
             });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lowrank_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& projection, int64_t feature_map, bool softmax, double eps) {
  Prepared pr = prepare(q, k, v, projection, feature_map, softmax, eps, "lowrank_bwd");
  const at::Tensor dout = prepare_grad_out(grad_out, pr, "lowrank_bwd");
  LowRankBwdParams p;
  static_cast<LowRankParams&>(p) = pr.params;
  // every row of dq / dk / dv is written by the passes below (which run whenever one
  // of them has an element), so no zero fill
  at::Tensor dq = at::empty_like(pr.q), dk = at::empty_like(pr.k), dv = at::empty_like(pr.v);
  p.dout = dout.data_ptr();
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  if (p.slices() > 0 && (p.N > 0 || p.M > 0)) {
    if (pr.compute == at::kDouble) backward<double>(p, pr.v.options());
    else backward<float>(p, pr.v.options());
  }
  return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dv.to(v.scalar_type())};
}

// ---- features op ----------------------------------------------------------------------------------

// The stabilizer c of every slice (Slice mode; 0 otherwise, with -inf -> 0).
template <class T>
at::Tensor slice_stabilizer(const FeatureParams& p, const at::TensorOptions& opts) {
  if (p.stab != Stabilizer::Slice || p.fmap != FeatureMap::Favor)
    return at::zeros({p.slices}, opts);
  const int64_t ns = row_splits(p.slices, p.n, at::get_num_threads());
  at::Tensor m = at::full({p.slices, ns}, -std::numeric_limits<double>::infinity(), opts);
  T* mp = m.data_ptr<T>();
  const CpuKernels<T> K = kernels<T>();
  for_ranges(p.slices, p.n, ns, p.F * p.Dk, [&](int64_t sl, int64_t s, int64_t r0, int64_t r1) {
    mp[sl * ns + s] = K.exponent_max(p, sl, r0, r1);
  });
  at::Tensor c = std::get<0>(m.max(1));
  return at::where(c == -std::numeric_limits<double>::infinity(), at::zeros({}, opts), c);
}

template <class T>
void features_pass(const FeatureParams& p, const at::TensorOptions& opts, bool backward) {
  const at::Tensor c = slice_stabilizer<T>(p, opts);
  const T* cp = c.data_ptr<T>();
  const CpuKernels<T> K = kernels<T>();
  for_ranges(p.slices, p.n, row_splits(p.slices, p.n, at::get_num_threads()), p.F * p.Dk,
             [&](int64_t sl, int64_t, int64_t r0, int64_t r1) {
               if (backward) K.features_bwd(p, sl, r0, r1, cp[sl]);
               else K.features(p, sl, r0, r1, cp[sl]);
             });
}

at::Tensor lowrank_features_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& projection,
                                int64_t feature_map, int64_t stabilize) {
  PreparedFeatures pr = prepare_features(x, projection, feature_map, stabilize, "lowrank_features");
  at::Tensor phi = at::empty(pr.out_shape, pr.x.options());
  pr.params.phi = phi.data_ptr();
  if (phi.numel() > 0) {
    if (pr.compute == at::kDouble) features_pass<double>(pr.params, pr.x.options(), false);
    else features_pass<float>(pr.params, pr.x.options(), false);
  }
  return phi;
}

at::Tensor lowrank_features_bwd_cpu(const at::Tensor& grad_phi, const at::Tensor& x,
                                    const c10::optional<at::Tensor>& projection,
                                    int64_t feature_map, int64_t stabilize) {
  PreparedFeatures pr =
      prepare_features(x, projection, feature_map, stabilize, "lowrank_features_bwd");
  TORCH_CHECK(grad_phi.sizes() == at::IntArrayRef(pr.out_shape), "lowrank_features_bwd: ",
              "grad_phi: expected shape ", at::IntArrayRef(pr.out_shape), ", got ",
              grad_phi.sizes());
  TORCH_CHECK(grad_phi.device() == x.device(), "lowrank_features_bwd: grad_phi: expected a ",
              "tensor on ", x.device(), ", got ", grad_phi.device());
  const at::Tensor g = grad_phi.to(pr.x.options()).contiguous();
  at::Tensor dx = at::zeros_like(pr.x);
  pr.params.dphi = g.data_ptr();
  pr.params.dx = dx.data_ptr();
  if (dx.numel() > 0 && g.numel() > 0) {
    if (pr.compute == at::kDouble) features_pass<double>(pr.params, pr.x.options(), true);
    else features_pass<float>(pr.params, pr.x.options(), true);
  }
  return dx.to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(itnet, CPU, m) {
  m.impl("lowrank_fwd", &lowrank_fwd_cpu);
  m.impl("lowrank_bwd", &lowrank_bwd_cpu);
  m.impl("lowrank_features", &lowrank_features_cpu);
  m.impl("lowrank_features_bwd", &lowrank_features_bwd_cpu);
}

}  // namespace lowrank
}  // namespace itnet
