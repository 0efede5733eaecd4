// CUDA entry points of the sparse (pair-list) integral transform (float32 and
// float64): the checks and layouts of sparse/prepare.cpp (the same as on CPU,
// with copies = 1 gradient buffer), output and gradient buffers, the kernel
// launches (cuda_fwd.cu, cuda_bwd.cu; design in cuda_kernel.h) on the current
// stream of v's device, and the fixed-order reductions of the partial sums.
//
// Deterministic mode. By default the backward scatters the key-side
// gradients (dk, dv, dt) and the offset-table gradient with float atomics.
// Under torch.use_deterministic_algorithms(True) it runs without any float
// atomic: dk / dv / dt come from a key-owned pass over the present pairs
// sorted by key (at::sort, stable), the offset-table gradient from per-warp
// partial sums like dW2 / db2, and every partial sum is reduced here by
// at::sum. Results are bitwise repeatable on the same GPU and sizes.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "common/cuda_launch.h"
#include "sparse/cuda_kernel.h"
#include "sparse/prepare.h"

namespace itnet {
namespace sparse {
namespace {

void check_cuda_value(const at::Tensor& v, const char* op) {
  TORCH_CHECK(ITNET_ON_CUDA(v), op, ": v: expected a CUDA tensor (other inputs are on CUDA), got a ",
              "tensor on ", v.device());
  TORCH_CHECK(v.scalar_type() == at::kFloat || v.scalar_type() == at::kDouble, op,
              ": v: expected dtype float32 or float64 (the sparse op's CUDA kernels), got ",
              v.scalar_type());
}

CudaDevice device_info() {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  CudaDevice d;
  d.smem_optin = static_cast<int64_t>(prop->sharedMemPerBlockOptin);
  d.sm_count = static_cast<int64_t>(prop->multiProcessorCount);
  return d;
}

std::tuple<at::Tensor, at::Tensor> sparse_fwd_cuda(const SparseArgs& a) {
  const at::Tensor& v = a.v;
  check_cuda_value(v, "sparse_fwd");
  const c10::cuda::CUDAGuard guard(v.device());
  Prepared pr = prepare(a);
  SparseParams& p = pr.params;
  const KernelParams& f = p.f;
  // the kernel accumulates the output rows in place and writes every lse
  at::Tensor out = at::zeros({f.B, f.H, f.N, f.Dv}, v.options());
  at::Tensor lse =
      a.softmax ? at::empty({f.B, f.H, f.N}, v.options()) : at::empty({0}, v.options());
  p.f.out = out.data_ptr();
  p.f.lse = a.softmax ? lse.data_ptr() : nullptr;
  if (f.B * f.N == 0 || f.H == 0) {
    if (a.softmax) lse.fill_(-std::numeric_limits<double>::infinity());
    return {out, lse};
  }
  cuda_sparse_fwd(p, v.scalar_type() == at::kDouble, device_info(),
                  at::cuda::getCurrentCUDAStream());
  // pr.keep_alive is released here; the caching allocator keeps the memory
  // for the kernel, which runs on the same stream
  return {out, lse};
}

GradTuple sparse_bwd_cuda(const GradArgs& g, const SparseArgs& a) {
  const at::Tensor& v = a.v;
  check_cuda_value(v, "sparse_bwd");
  const c10::cuda::CUDAGuard guard(v.device());
  Prepared pr = prepare(a);
  // one gradient buffer each (copies = 1), zero-filled
  const Backward bw = prepare_backward(pr, g, a, /*copies=*/1);
  const KernelParams& f = pr.params.f;
  const int64_t B = f.B, N = f.N, M = f.M, E = pr.params.E;
  // no pair: all zero. M == 0 too: prepare() admits only absent pairs then (a present
  // pair's key is in [0, M)), and the key-side buffers (dk, dv) have no elements, so
  // cuda_sparse_bwd's buffer checks would reject the call.
  if (B * N == 0 || f.H == 0 || E == 0 || M == 0) return bw.finish(a);

  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const bool is_double = v.scalar_type() == at::kDouble;
  const CudaBwdPlan plan = cuda_sparse_bwd_plan(bw.params, is_double, deterministic, device_info());
  CudaBwdExtra ex;
  ex.deterministic = deterministic;
  const auto opts = v.options();
  // per-warp partial sums of the row pass (plain read-modify-write, zero-filled)
  at::Tensor dW2_part, db2_part, dE_part;
  if (bw.dW2.numel() > 0) {
    dW2_part = at::zeros({plan.warps, f.H, f.R}, opts);
    ex.dW2_part = dW2_part.data_ptr();
  }
  if (bw.db2.numel() > 0) {
    db2_part = at::zeros({plan.warps, f.H}, opts);
    ex.db2_part = db2_part.data_ptr();
  }
  if (deterministic && bw.dE.numel() > 0) {
    dE_part = at::zeros({plan.warps, f.O, f.R}, opts);
    ex.dE_part = dE_part.data_ptr();
  }
  // the key pass's pair list: the present pairs sorted (stably) by b * M + key
  at::Tensor perm, key_ptr, entry_row;
  if (deterministic && B * M > 0) {
    const auto lopts = a.col_idx.options();
    const at::Tensor rp = a.row_ptr.contiguous();
    const at::Tensor eidx = at::arange(E, lopts).unsqueeze(0).expand({B, E}).contiguous();
    at::Tensor present = eidx < rp.select(1, N).unsqueeze(1);  // listed
    if (a.log_w.has_value())
      present = present.logical_and(a.log_w->ne(-std::numeric_limits<double>::infinity()));
    const at::Tensor sort_key =
        at::where(present, a.col_idx + at::arange(B, lopts).unsqueeze(1) * M, B * M);
    auto sorted = at::sort(sort_key.reshape({-1}), /*stable=*/true, /*dim=*/0,
                           /*descending=*/false);
    perm = std::get<1>(sorted).contiguous();
    key_ptr = at::searchsorted(std::get<0>(sorted), at::arange(B * M + 1, lopts)).contiguous();
    entry_row = (at::searchsorted(rp, eidx, /*out_int32=*/false, /*right=*/true) - 1).contiguous();
    ex.perm = perm.data_ptr<int64_t>();
    ex.key_ptr = key_ptr.data_ptr<int64_t>();
    ex.entry_row = entry_row.data_ptr<int64_t>();
  }
  cuda_sparse_bwd(bw.params, ex, plan, is_double, at::cuda::getCurrentCUDAStream());
  // fixed-order reductions of the partial sums into the (1, ...) buffers
  if (dW2_part.defined()) bw.dW2.copy_(dW2_part.sum(0, /*keepdim=*/true));
  if (db2_part.defined()) bw.db2.copy_(db2_part.sum(0, /*keepdim=*/true));
  if (dE_part.defined()) bw.dE.copy_(dE_part.sum(0, /*keepdim=*/true));
  return bw.finish(a);
}

}  // namespace

ITNET_CUDA_LIBRARY_IMPL(m) {
  m.impl("sparse_fwd", &OpEntry<SparseArgs>::fwd<&sparse_fwd_cuda>);
  m.impl("sparse_bwd", &OpEntry<SparseArgs>::bwd<&sparse_bwd_cuda>);
}

}  // namespace sparse
}  // namespace itnet
