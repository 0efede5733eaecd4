// CPU entry points of the sparse (pair-list) integral transform: checks and
// layouts (sparse/prepare.cpp), the parallel loop over query rows and the sum
// of the per-thread key-side / parameter gradient buffers (in a fixed order,
// so a given thread count gives bitwise-identical gradients).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/capability.h"
#include "sparse/cpu_kernel.h"
#include "sparse/prepare.h"

namespace itnet {
namespace sparse {
namespace {

CpuKernelTable cpu_kernels() { return ITNET_CPU_KERNEL_TABLE(); }

// Rows per task: enough work per task to amortize its scratch buffers.
constexpr int64_t kRowGrain = 16;

std::tuple<at::Tensor, at::Tensor> sparse_fwd_cpu(
    const c10::optional<at::Tensor>& q, const c10::optional<at::Tensor>& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& u, const c10::optional<at::Tensor>& t,
    const c10::optional<at::Tensor>& W2, const c10::optional<at::Tensor>& b2,
    const c10::optional<at::Tensor>& offset_table, const c10::optional<at::Tensor>& q_pos,
    const c10::optional<at::Tensor>& k_pos, const at::Tensor& row_ptr, const at::Tensor& col_idx,
    const c10::optional<at::Tensor>& log_w, at::ArrayRef<double> window_lo,
    at::ArrayRef<double> window_hi, double scale, int64_t activation, bool softmax) {
  const SparseArgs a = SparseArgs::from(q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos, row_ptr,
                                        col_idx, log_w, window_lo, window_hi, scale, activation,
                                        softmax);
  Prepared pr = prepare(a, /*key_major=*/true);
  SparseParams& p = pr.params;
  const KernelParams& f = p.f;
  at::Tensor out = at::empty({f.B, f.H, f.N, f.Dv}, v.options());
  at::Tensor lse = softmax ? at::empty({f.B, f.H, f.N}, v.options()) : at::empty({0}, v.options());
  p.f.out = out.data_ptr();
  p.f.lse = softmax ? lse.data_ptr() : nullptr;
  if (f.B * f.N == 0) return {out, lse};
  const FwdFn fn = v.scalar_type() == at::kDouble ? cpu_kernels().fwd_f64 : cpu_kernels().fwd_f32;
  at::parallel_for(0, f.B * f.N, kRowGrain, [&](int64_t b, int64_t e) { fn(p, b, e); });
  return {out, lse};
}

GradTuple sparse_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& lse,
    const c10::optional<at::Tensor>& grad_lse, const c10::optional<at::Tensor>& q,
    const c10::optional<at::Tensor>& k, const at::Tensor& v, const c10::optional<at::Tensor>& u,
    const c10::optional<at::Tensor>& t, const c10::optional<at::Tensor>& W2,
    const c10::optional<at::Tensor>& b2, const c10::optional<at::Tensor>& offset_table,
    const c10::optional<at::Tensor>& q_pos, const c10::optional<at::Tensor>& k_pos,
    const at::Tensor& row_ptr, const at::Tensor& col_idx, const c10::optional<at::Tensor>& log_w,
    at::ArrayRef<double> window_lo, at::ArrayRef<double> window_hi, double scale,
    int64_t activation, bool softmax) {
  const SparseArgs a = SparseArgs::from(q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos, row_ptr,
                                        col_idx, log_w, window_lo, window_hi, scale, activation,
                                        softmax);
  Prepared pr = prepare(a, /*key_major=*/true);
  const KernelParams& f = pr.params.f;
  // One buffer of key-side / parameter gradients per thread (at::parallel_for
  // hands each task its thread's id in [0, get_num_threads())).
  const int64_t copies = at::get_num_threads();
  const Backward bw = prepare_backward(pr, GradArgs{grad_out, out, lse, grad_lse}, a, copies);
  if (f.B * f.N > 0 && f.H > 0) {
    const BwdFn fn =
        v.scalar_type() == at::kDouble ? cpu_kernels().bwd_f64 : cpu_kernels().bwd_f32;
    at::parallel_for(0, f.B * f.N, kRowGrain, [&](int64_t b, int64_t e) {
      const int64_t tid = at::get_thread_num();
      TORCH_INTERNAL_ASSERT(tid >= 0 && tid < copies, "sparse_bwd: thread id ", tid,
                            " outside the ", copies, " gradient buffers");
      fn(bw.params, b, e, tid);
    });
  }
  return bw.finish(a);
}

}  // namespace

TORCH_LIBRARY_IMPL(itnet, CPU, m) {
  m.impl("sparse_fwd", &sparse_fwd_cpu);
  m.impl("sparse_bwd", &sparse_bwd_cpu);
}

}  // namespace sparse
}  // namespace itnet
