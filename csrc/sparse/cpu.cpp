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

std::tuple<at::Tensor, at::Tensor> sparse_fwd_cpu(const SparseArgs& a) {
  Prepared pr = prepare(a, /*key_major=*/true);
  SparseParams& p = pr.params;
  const KernelParams& f = p.f;
  at::Tensor out = at::empty({f.B, f.H, f.N, f.Dv}, a.v.options());
  at::Tensor lse =
      a.softmax ? at::empty({f.B, f.H, f.N}, a.v.options()) : at::empty({0}, a.v.options());
  p.f.out = out.data_ptr();
  p.f.lse = a.softmax ? lse.data_ptr() : nullptr;
  if (f.B * f.N == 0) return {out, lse};
  const FwdFn fn =
      a.v.scalar_type() == at::kDouble ? cpu_kernels().fwd_f64 : cpu_kernels().fwd_f32;
  at::parallel_for(0, f.B * f.N, kRowGrain, [&](int64_t b, int64_t e) { fn(p, b, e); });
  return {out, lse};
}

GradTuple sparse_bwd_cpu(const GradArgs& g, const SparseArgs& a) {
  Prepared pr = prepare(a, /*key_major=*/true);
  const KernelParams& f = pr.params.f;
  // One buffer of key-side / parameter gradients per thread (at::parallel_for
  // hands each task its thread's id in [0, get_num_threads())).
  const int64_t copies = at::get_num_threads();
  const Backward bw = prepare_backward(pr, g, a, copies);
  if (f.B * f.N > 0 && f.H > 0) {
    const BwdFn fn =
        a.v.scalar_type() == at::kDouble ? cpu_kernels().bwd_f64 : cpu_kernels().bwd_f32;
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
  m.impl("sparse_fwd", &OpEntry<SparseArgs>::fwd<&sparse_fwd_cpu>);
  m.impl("sparse_bwd", &OpEntry<SparseArgs>::bwd<&sparse_bwd_cpu>);
}

}  // namespace sparse
}  // namespace itnet
