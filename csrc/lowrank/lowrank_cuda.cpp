// CUDA entry points of the low-rank op (lowrank_fwd / lowrank_bwd) and of its
// features op (lowrank_features / lowrank_features_bwd): the checks and
// compute-dtype copies of lowrank/prepare.cpp (the same as on CPU), the kernel
// launches (design in cuda_kernel.h) on the current stream of the inputs'
// device, and the fixed-order reductions of the partial sums (at::sum /
// at::max). The backward materializes the features and runs its contractions
// as batched matrix products (ATen / cuBLAS) in the compute dtype.
//
// Two consequences of the backward's cuBLAS products, left as they are until a
// fused backward has been validated on a GPU: (1) its denominators are summed
// in another order than the forward's, so a row whose |den| lies within
// rounding of eps > 0 may be cut on one side only (exact zeros, e.g. a relu
// row of zeros, are cut on both); (2) with TF32 matmuls enabled by the user
// (torch.backends.cuda.matmul.allow_tf32) float32 gradients lose precision
// (~1e-3) while the forward stays full float32.
//
// Deterministic: no float atomics anywhere; the key pass writes per-range
// partial sums that at::sum reduces in a fixed order, and the launch
// geometry depends only on the sizes and the GPU (its SM count).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "common/cuda_launch.h"
#include "lowrank/cuda_kernel.h"
#include "lowrank/feature.h"
#include "lowrank/prepare.h"

namespace itnet {
namespace lowrank {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

void check_cuda(const at::Tensor& x, const char* name, const char* op) {
  TORCH_CHECK(ITNET_ON_CUDA(x), op, ": ", name, ": expected a CUDA tensor (other inputs are on CUDA), ",
              "got a tensor on ", x.device());
}

int64_t sm_count() {
  return static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
}

bool is_double(at::ScalarType t) { return t == at::kDouble; }

// The FAVOR+ Slice stabilizer of every slice of x (slices, n, Dk): max of the
// exponents over rows and features, -inf (no row) -> 0. (slices,) in x's dtype.
at::Tensor slice_stabilizer(const at::Tensor& x, const at::Tensor& W, int64_t slices, int64_t n,
                            int64_t Dk, int64_t F) {
  const auto opts = x.options();
  if (slices == 0) return at::zeros({0}, opts);
  const int64_t splits = cuda_max_splits(slices, n, sm_count());
  at::Tensor m = at::full({slices, splits}, kNegInf, opts);
  if (n > 0 && F > 0) {
    FeatureParams fp;
    fp.slices = slices;
    fp.n = n;
    fp.Dk = Dk;
    fp.F = F;
    fp.fmap = FeatureMap::Favor;
    fp.x = x.data_ptr();
    fp.W = W.data_ptr();
    cuda_exponent_max(fp, splits, m.data_ptr(), is_double(x.scalar_type()),
                      at::cuda::getCurrentCUDAStream());
  }
  at::Tensor c = std::get<0>(m.max(1));
  return at::where(c == kNegInf, at::zeros({}, opts), c);
}

// phi (slices, n, F) = fmap(x) for x (slices, n, Dk) contiguous, stabilized per
// `stab` (FAVOR+ only; c (slices,) for Slice).
at::Tensor features(const at::Tensor& x, const at::Tensor& W, FeatureMap fm, Stabilizer stab,
                    const at::Tensor& c, int64_t slices, int64_t n, int64_t Dk, int64_t F) {
  at::Tensor phi = at::empty({slices, n, F}, x.options());
  if (phi.numel() == 0) return phi;
  FeatureParams fp;
  fp.slices = slices;
  fp.n = n;
  fp.Dk = Dk;
  fp.F = F;
  fp.fmap = fm;
  fp.stab = fm == FeatureMap::Favor ? stab : Stabilizer::None;
  fp.x = x.data_ptr();
  fp.W = W.defined() ? W.data_ptr() : nullptr;
  fp.phi = phi.data_ptr();
  cuda_features(fp, fp.stab == Stabilizer::Slice ? c.data_ptr() : nullptr,
                is_double(x.scalar_type()), at::cuda::getCurrentCUDAStream());
  return phi;
}

// dx (slices, n, Dk) from dphi (slices, n, F), given x and its features phi
// (stabilized as in the forward; the stabilizer is a detached constant):
// elementwise maps dx = dphi fmap'(x); FAVOR+ (feature.h)
//   dx = s (sum_r g_r W_r - x' sum_r g_r),  g = dphi phi,  x' = s x.
at::Tensor feature_backward(const at::Tensor& x, const at::Tensor& phi, const at::Tensor& dphi,
                            const at::Tensor& W, FeatureMap fm, int64_t slices, int64_t n,
                            int64_t Dk) {
  if (fm == FeatureMap::Favor) {
    if (x.numel() == 0) return at::zeros_like(x);
    const double s = is_double(x.scalar_type()) ? favor_input_scale<double>(Dk)
                                                : static_cast<double>(favor_input_scale<float>(Dk));
    const at::Tensor g = dphi * phi;
    // (slices * n, F) @ (F, Dk); F = 0 cannot happen (prepare requires F >= 1)
    at::Tensor dx = at::matmul(g.reshape({slices * n, -1}), W).reshape({slices, n, Dk});
    dx.sub_(x * (g.sum(-1, /*keepdim=*/true) * s));
    return dx.mul_(s);
  }
  at::Tensor dx = at::empty_like(x);
  FeatureParams fp;
  fp.slices = slices;
  fp.n = n;
  fp.Dk = Dk;
  fp.F = Dk;
  fp.fmap = fm;
  fp.x = x.data_ptr();
  fp.dphi = dphi.data_ptr();
  fp.dx = dx.data_ptr();
  cuda_elementwise_feature_grad(fp, is_double(x.scalar_type()), at::cuda::getCurrentCUDAStream());
  return dx;
}

// ---- the transform --------------------------------------------------------------------------------

at::Tensor lowrank_fwd_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const c10::optional<at::Tensor>& projection, int64_t feature_map,
                            bool softmax, double eps) {
  check_cuda(v, "v", "lowrank_fwd");
  const c10::cuda::CUDAGuard guard(v.device());
  Prepared pr = prepare(q, k, v, projection, feature_map, softmax, eps, "lowrank_fwd");
  LowRankParams& p = pr.params;
  const auto opts = pr.v.options();
  at::Tensor out = at::empty({p.B, p.H, p.N, p.Dv}, opts);
  p.out = out.data_ptr();
  if (out.numel() == 0) return out.to(v.scalar_type());
  const bool dbl = is_double(pr.compute);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t BH = p.slices();
  at::Tensor S, z;
  if (p.M == 0) {
    S = at::zeros({BH, p.F, p.Dv}, opts);
    z = at::zeros({BH, p.F}, opts);
  } else {
    at::Tensor c;
    if (p.key_stabilizer() == Stabilizer::Slice)
      c = slice_stabilizer(pr.k, pr.W, BH, p.M, p.Dk, p.F);
    const int64_t splits = cuda_key_splits(BH, p.M, p.F, p.Dv, sm_count());
    // every element is written by the key pass; zeros keep F = 0 (no block) defined
    at::Tensor S_parts = at::zeros({BH, splits, p.F, p.Dv}, opts);
    at::Tensor z_parts = at::zeros({BH, splits, p.F}, opts);
    cuda_keys(p, c.defined() ? c.data_ptr() : nullptr, splits, S_parts.data_ptr(),
              z_parts.data_ptr(), dbl, stream);
    S = S_parts.sum(1);  // fixed order
    z = z_parts.sum(1);
  }
  cuda_queries(p, S.data_ptr(), z.data_ptr(), dbl, stream);
  return out.to(v.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lowrank_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& projection, int64_t feature_map, bool softmax, double eps) {
  check_cuda(v, "v", "lowrank_bwd");
  const c10::cuda::CUDAGuard guard(v.device());
  Prepared pr = prepare(q, k, v, projection, feature_map, softmax, eps, "lowrank_bwd");
  const at::Tensor dout = prepare_grad_out(grad_out, pr, "lowrank_bwd");
  const LowRankParams& p = pr.params;
  const int64_t BH = p.slices(), N = p.N, M = p.M, Dk = p.Dk, Dv = p.Dv, F = p.F;
  const auto opts = pr.v.options();
  auto finish = [&](const at::Tensor& dq, const at::Tensor& dk, const at::Tensor& dv) {
    return std::make_tuple(dq.reshape(q.sizes()).to(q.scalar_type()),
                           dk.reshape(k.sizes()).to(k.scalar_type()),
                           dv.reshape(v.sizes()).to(v.scalar_type()));
  };
  // N = 0 or M = 0: no query sees a key, every gradient is 0 (as on CPU)
  if (BH == 0 || N == 0 || M == 0)
    return finish(at::zeros_like(pr.q), at::zeros_like(pr.k), at::zeros_like(pr.v));
  const bool dbl = is_double(pr.compute);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor q3 = pr.q.view({BH, N, Dk}), k3 = pr.k.view({BH, M, Dk});
  const at::Tensor v3 = pr.v.view({BH, M, Dv}), g3 = dout.view({BH, N, Dv});

  // the forward's key features (stabilized by the slice's c, a constant) and S, z
  at::Tensor c;
  Stabilizer kstab = p.key_stabilizer();
  if (kstab == Stabilizer::Slice) c = slice_stabilizer(pr.k, pr.W, BH, M, Dk, F);
  const at::Tensor psi = features(k3, pr.W, p.fmap, kstab, c, BH, M, Dk, F);  // (BH, M, F)
  const at::Tensor S = at::bmm(psi.transpose(1, 2), v3);                      // (BH, F, Dv)
  const at::Tensor z = psi.sum(1);                                            // (BH, F)

  // queries: phi, then dn = dL/dnum and dden = dL/dden per row
  const at::Tensor phi =
      features(q3, pr.W, p.fmap, p.query_stabilizer(), at::Tensor(), BH, N, Dk, F);  // (BH, N, F)
  at::Tensor dn = g3, dden;
  if (softmax) {
    const at::Tensor num = at::bmm(phi, S);                           // (BH, N, Dv)
    const at::Tensor den = at::bmm(phi, z.unsqueeze(2)).squeeze(2).contiguous();  // (BH, N)
    dn = at::empty_like(g3);
    dden = at::empty({BH, N}, opts);
    cuda_softmax_row_grads(BH * N, Dv, g3.data_ptr(), num.data_ptr(), den.data_ptr(), eps,
                           dn.data_ptr(), dden.data_ptr(), dbl, stream);
  }
  // dphi = S dn + z dden (per row), dS = sum_i phi_i dn_i^T, dz = sum_i phi_i dden_i
  at::Tensor dphi = at::bmm(dn, S.transpose(1, 2));  // (BH, N, F)
  if (softmax) dphi.add_(dden.unsqueeze(2) * z.unsqueeze(1));
  const at::Tensor dq = feature_backward(q3, phi, dphi, pr.W, p.fmap, BH, N, Dk);
  const at::Tensor dS = at::bmm(phi.transpose(1, 2), dn);  // (BH, F, Dv)

  // keys: dpsi = dS v_j + dz, dv_j = dS^T psi_j
  at::Tensor dpsi = at::bmm(v3, dS.transpose(1, 2));  // (BH, M, F)
  if (softmax) {
    const at::Tensor dz = at::bmm(phi.transpose(1, 2), dden.unsqueeze(2)).squeeze(2);  // (BH, F)
    dpsi.add_(dz.unsqueeze(1));
  }
  const at::Tensor dv = at::bmm(psi, dS);  // (BH, M, Dv)
  const at::Tensor dk = feature_backward(k3, psi, dpsi, pr.W, p.fmap, BH, M, Dk);
  return finish(dq, dk, dv);
}

// ---- features op ----------------------------------------------------------------------------------

at::Tensor lowrank_features_cuda(const at::Tensor& x, const c10::optional<at::Tensor>& projection,
                                 int64_t feature_map, int64_t stabilize) {
  check_cuda(x, "x", "lowrank_features");
  const c10::cuda::CUDAGuard guard(x.device());
  PreparedFeatures pr = prepare_features(x, projection, feature_map, stabilize, "lowrank_features");
  const FeatureParams& p = pr.params;
  at::Tensor c;
  if (p.fmap == FeatureMap::Favor && p.stab == Stabilizer::Slice)
    c = slice_stabilizer(pr.x, pr.W, p.slices, p.n, p.Dk, p.F);
  return features(pr.x, pr.W, p.fmap, p.stab, c, p.slices, p.n, p.Dk, p.F)
      .view(at::IntArrayRef(pr.out_shape));
}

at::Tensor lowrank_features_bwd_cuda(const at::Tensor& grad_phi, const at::Tensor& x,
                                     const c10::optional<at::Tensor>& projection,
                                     int64_t feature_map, int64_t stabilize) {
  check_cuda(x, "x", "lowrank_features_bwd");
  const c10::cuda::CUDAGuard guard(x.device());
  PreparedFeatures pr =
      prepare_features(x, projection, feature_map, stabilize, "lowrank_features_bwd");
  TORCH_CHECK(grad_phi.sizes() == at::IntArrayRef(pr.out_shape), "lowrank_features_bwd: ",
              "grad_phi: expected shape ", at::IntArrayRef(pr.out_shape), ", got ",
              grad_phi.sizes());
  TORCH_CHECK(grad_phi.device() == x.device(), "lowrank_features_bwd: grad_phi: expected a ",
              "tensor on ", x.device(), ", got ", grad_phi.device());
  const FeatureParams& p = pr.params;
  if (pr.x.numel() == 0 || p.F == 0) return at::zeros_like(pr.x).to(x.scalar_type());
  const at::Tensor g = grad_phi.to(pr.x.options()).contiguous().view({p.slices, p.n, p.F});
  const at::Tensor x3 = pr.x.view({p.slices, p.n, p.Dk});
  at::Tensor phi;
  if (p.fmap == FeatureMap::Favor) {  // the elementwise maps' dx needs x only
    at::Tensor c;
    if (p.stab == Stabilizer::Slice) c = slice_stabilizer(pr.x, pr.W, p.slices, p.n, p.Dk, p.F);
    phi = features(x3, pr.W, p.fmap, p.stab, c, p.slices, p.n, p.Dk, p.F);
  }
  return feature_backward(x3, phi, g, pr.W, p.fmap, p.slices, p.n, p.Dk)
      .view(x.sizes())
      .to(x.scalar_type());
}

}  // namespace

ITNET_CUDA_LIBRARY_IMPL(m) {
  m.impl("lowrank_fwd", &lowrank_fwd_cuda);
  m.impl("lowrank_bwd", &lowrank_bwd_cuda);
  m.impl("lowrank_features", &lowrank_features_cuda);
  m.impl("lowrank_features_bwd", &lowrank_features_bwd_cuda);
}

}  // namespace lowrank
}  // namespace itnet
