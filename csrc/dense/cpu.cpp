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

std::tuple<at::Tensor, at::Tensor> dense_fwd_cpu(
    const c10::optional<at::Tensor>& q, const c10::optional<at::Tensor>& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& u, const c10::optional<at::Tensor>& t,
    const c10::optional<at::Tensor>& W2, const c10::optional<at::Tensor>& b2,
    const c10::optional<at::Tensor>& offset_table, const c10::optional<at::Tensor>& q_pos,
    const c10::optional<at::Tensor>& k_pos, const c10::optional<at::Tensor>& key_weight,
    const c10::optional<at::Tensor>& key_padding_mask, const c10::optional<at::Tensor>& attn_mask,
    at::ArrayRef<double> window_lo, at::ArrayRef<double> window_hi, double scale,
    int64_t activation, bool softmax, bool causal) {
  const DenseArgs a = DenseArgs::from(q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos,
                                      key_weight, key_padding_mask, attn_mask, window_lo,
                                      window_hi, scale, activation, softmax, causal);
  Prepared pr = prepare(a, /*key_tile=*/kCpuBlockK, /*backward=*/false);
  FwdParams& p = pr.params;
  at::Tensor out = at::empty({p.B, p.H, p.N, p.Dv}, v.options());
  at::Tensor lse = softmax ? at::empty({p.B, p.H, p.N}, v.options()) : at::empty({0}, v.options());
  p.out = out.data_ptr();
  p.lse = softmax ? lse.data_ptr() : nullptr;
  if (p.N == 0) return {out, lse};
  const FwdRangeFn fn =
      v.scalar_type() == at::kDouble ? cpu_kernels().fwd_f64 : cpu_kernels().fwd_f32;
  at::parallel_for(0, cpu_fwd_items(p), 1, [&](int64_t b, int64_t e) { fn(p, b, e); });
  return {out, lse};
}

GradTuple dense_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& lse,
              const c10::optional<at::Tensor>& grad_lse,
              const c10::optional<at::Tensor>& q, const c10::optional<at::Tensor>& k,
              const at::Tensor& v, const c10::optional<at::Tensor>& u,
              const c10::optional<at::Tensor>& t, const c10::optional<at::Tensor>& W2,
              const c10::optional<at::Tensor>& b2, const c10::optional<at::Tensor>& offset_table,
              const c10::optional<at::Tensor>& q_pos, const c10::optional<at::Tensor>& k_pos,
              const c10::optional<at::Tensor>& key_weight,
              const c10::optional<at::Tensor>& key_padding_mask,
              const c10::optional<at::Tensor>& attn_mask, at::ArrayRef<double> window_lo,
              at::ArrayRef<double> window_hi, double scale, int64_t activation, bool softmax,
              bool causal) {
  const DenseArgs a = DenseArgs::from(q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos,
                                      key_weight, key_padding_mask, attn_mask, window_lo,
                                      window_hi, scale, activation, softmax, causal);
  Prepared pr = prepare(a, /*key_tile=*/kCpuBlockK, /*backward=*/true);
  const FwdParams& p = pr.params;
  // query-side and parameter gradients: one buffer per thread, summed by finish()
  const Backward bw =
      prepare_backward(pr, GradArgs{grad_out, out, lse, grad_lse}, a, at::get_num_threads());
  if (p.B * p.H * p.N * p.M > 0) {
    const BwdRangeFn fn =
        v.scalar_type() == at::kDouble ? cpu_kernels().bwd_f64 : cpu_kernels().bwd_f32;
    at::parallel_for(0, cpu_bwd_items(p), 1, [&](int64_t b, int64_t e) {
      fn(bw.params, b, e, at::get_thread_num());
    });
  }
  return bw.finish(a);
}

}  // namespace

TORCH_LIBRARY_IMPL(itnet, CPU, m) {
  m.impl("dense_fwd", &dense_fwd_cpu);
  m.impl("dense_bwd", &dense_bwd_cpu);
}

}  // namespace dense
}  // namespace itnet
