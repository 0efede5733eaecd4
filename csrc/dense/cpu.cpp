// CPU entry points of the dense integral transform: input checks that need
// the data (NaN / integer positions, positive weights), the layout the
// kernels want (contiguous, transposed k / v / t, per-key bias), the
// parallel loop over work items and the reduction of per-thread gradients.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/capability.h"
#include "dense/cpu_kernel.h"
#include "dense/prepare.h"

namespace itnet {
namespace dense {

namespace {

CpuKernelTable cpu_kernels() { return ITNET_CPU_KERNEL_TABLE(); }

std::tuple<at::Tensor, at::Tensor> dense_fwd_cpu(const DenseArgs& a) {
  Prepared pr = prepare(a, /*key_tile=*/kCpuBlockK, /*backward=*/false);
  FwdParams& p = pr.params;
  at::Tensor out = at::empty({p.B, p.H, p.N, p.Dv}, a.v.options());
  at::Tensor lse =
      a.softmax ? at::empty({p.B, p.H, p.N}, a.v.options()) : at::empty({0}, a.v.options());
  p.out = out.data_ptr();
  p.lse = a.softmax ? lse.data_ptr() : nullptr;
  if (p.N == 0) return {out, lse};
  const FwdRangeFn fn =
      a.v.scalar_type() == at::kDouble ? cpu_kernels().fwd_f64 : cpu_kernels().fwd_f32;
  at::parallel_for(0, cpu_fwd_items(p), 1, [&](int64_t b, int64_t e) { fn(p, b, e); });
  return {out, lse};
}

GradTuple dense_bwd_cpu(const GradArgs& g, const DenseArgs& a) {
  Prepared pr = prepare(a, /*key_tile=*/kCpuBlockK, /*backward=*/true);
  const FwdParams& p = pr.params;
  // query-side and parameter gradients: one buffer per thread, summed by finish()
  const Backward bw = prepare_backward(pr, g, a, at::get_num_threads());
  if (p.B * p.H * p.N * p.M > 0) {
    const BwdRangeFn fn =
        a.v.scalar_type() == at::kDouble ? cpu_kernels().bwd_f64 : cpu_kernels().bwd_f32;
    at::parallel_for(0, cpu_bwd_items(p), 1, [&](int64_t b, int64_t e) {
      fn(bw.params, b, e, at::get_thread_num());
    });
  }
  return bw.finish(a);
}

}  // namespace

TORCH_LIBRARY_IMPL(itnet, CPU, m) {
  m.impl("dense_fwd", &OpEntry<DenseArgs>::fwd<&dense_fwd_cpu>);
  m.impl("dense_bwd", &OpEntry<DenseArgs>::bwd<&dense_bwd_cpu>);
}

}  // namespace dense
}  // namespace itnet
