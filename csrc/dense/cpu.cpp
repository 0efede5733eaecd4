// CPU entry points of the dense integral transform: input checks that need
// the data (NaN / integer positions, positive weights), the layout the
// kernels want (contiguous, transposed k / v / t, per-key bias), the
// parallel loop over work items and the reduction of per-thread gradients.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

#include "dense/cpu_kernel.h"
#include "dense/prepare.h"
#include "dense/info.h"

namespace itnet {
namespace dense {

// The kernel table for this machine. ITNET_CPU_CAPABILITY (DEFAULT, AVX2,
// AVX512) caps it, so the narrower code paths can be tested on a wide machine;
// otherwise ATen's own detection (which honours ATEN_CPU_CAPABILITY) decides.
std::string cpu_capability_in_use() {
#ifdef ITNET_CPU_X86
  std::string cap = at::get_cpu_capability();
  if (cap != "AVX512" && cap != "AVX2") cap = "DEFAULT";
  if (const char* env = std::getenv("ITNET_CPU_CAPABILITY")) {
    const std::string want(env);
    if (want == "DEFAULT" || (want == "AVX2" && cap == "AVX512")) cap = want;
  }
  return cap;
#else
  return "DEFAULT";
#endif
}

namespace {

CpuKernelTable cpu_kernels() {
#ifdef ITNET_CPU_X86
  const std::string cap = cpu_capability_in_use();
  if (cap == "AVX512") return AVX512::kernel_table();
  if (cap == "AVX2") return AVX2::kernel_table();
#endif
  return DEFAULT::kernel_table();
}

std::tuple<at::Tensor, at::Tensor> dense_fwd_cpu(
    const c10::optional<at::Tensor>& q, const c10::optional<at::Tensor>& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& u, const c10::optional<at::Tensor>& t,
    const c10::optional<at::Tensor>& W2, const c10::optional<at::Tensor>& b2,
    const c10::optional<at::Tensor>& offset_table, const c10::optional<at::Tensor>& q_pos,
    const c10::optional<at::Tensor>& k_pos, const c10::optional<at::Tensor>& key_weight,
    const c10::optional<at::Tensor>& key_padding_mask, const c10::optional<at::Tensor>& attn_mask,
    at::ArrayRef<double> window_lo, at::ArrayRef<double> window_hi, double scale,
    int64_t activation, bool softmax, bool causal) {
  Prepared pr = prepare(q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos, key_weight,
                        key_padding_mask, attn_mask, window_lo, window_hi, scale, activation,
                        softmax, causal, /*key_tile=*/kCpuBlockK, /*backward=*/false);
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

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor>
dense_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& lse,
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
  Prepared pr = prepare(q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos, key_weight,
                        key_padding_mask, attn_mask, window_lo, window_hi, scale, activation,
                        softmax, causal, /*key_tile=*/kCpuBlockK, /*backward=*/true);
  const FwdParams& p = pr.params;
  check_grad_inputs(grad_out, out, lse, grad_lse, v, p, softmax);
  const auto opts = v.options();
  const int64_t T = at::get_num_threads();

  BwdParams bp;
  bp.f = p;
  at::Tensor dout = grad_out.contiguous();
  at::Tensor lse_c, delta;
  if (softmax) {
    lse_c = lse.contiguous();
    // FlashAttention's D = rowsum(dO * O). A gradient g on lse adds P * g to
    // the logit gradient P * (dP - D), i.e. it shifts D by -g.
    delta = (dout * out).sum(-1);
    if (grad_lse.has_value() && grad_lse->defined()) delta = delta - *grad_lse;
    delta = delta.contiguous();
    bp.lse = lse_c.data_ptr();
    bp.delta = delta.data_ptr();
  }
  bp.dout = dout.data_ptr();

  // key side: owned by key tiles, written in place
  auto none = [&]() { return at::empty({0}, opts); };
  const bool has_u = p.mlp && u.has_value(), has_t = p.mlp && t.has_value();
  const bool has_b2 = p.mlp && b2.has_value(), has_E = p.mlp && offset_table.has_value();
  const bool need_dkw = key_weight.has_value();
  at::Tensor dk = p.content ? at::zeros({p.B, p.H, p.M, p.Dk}, opts) : none();
  at::Tensor dv = at::zeros({p.B, p.H, p.M, p.Dv}, opts);
  at::Tensor dt = has_t ? at::zeros({p.B, p.M, p.R}, opts) : none();
  // everything else: one buffer per thread, summed afterwards
  at::Tensor dq_t = p.content ? at::zeros({T, p.B, p.H, p.N, p.Dk}, opts) : at::Tensor();
  at::Tensor du_t = has_u ? at::zeros({T, p.B, p.N, p.R}, opts) : at::Tensor();
  at::Tensor dW2_t = p.mlp ? at::zeros({T, p.H, p.R}, opts) : at::Tensor();
  at::Tensor db2_t = has_b2 ? at::zeros({T, p.H}, opts) : at::Tensor();
  at::Tensor dE_t = has_E ? at::zeros({T, p.O, p.R}, opts) : at::Tensor();
  at::Tensor dkw_t = need_dkw ? at::zeros({T, p.B, p.M}, opts) : at::Tensor();
  auto ptr = [](const at::Tensor& x) { return x.defined() ? x.data_ptr() : nullptr; };
  bp.dk = ptr(dk);
  bp.dv = ptr(dv);
  bp.dt = has_t ? ptr(dt) : nullptr;
  bp.dq = ptr(dq_t);
  bp.du = ptr(du_t);
  bp.dW2 = ptr(dW2_t);
  bp.db2 = ptr(db2_t);
  bp.dE = ptr(dE_t);
  bp.dkw = ptr(dkw_t);
  bp.need_dkw = need_dkw;

  if (p.B * p.H * p.N * p.M > 0) {
    const BwdRangeFn fn =
        v.scalar_type() == at::kDouble ? cpu_kernels().bwd_f64 : cpu_kernels().bwd_f32;
    at::parallel_for(0, cpu_bwd_items(p), 1, [&](int64_t b, int64_t e) {
      fn(bp, b, e, at::get_thread_num());
    });
  }

  at::Tensor dq = dq_t.defined() ? dq_t.sum(0) : none();
  at::Tensor du = has_u ? reduce_to(du_t.sum(0), *u) : none();
  at::Tensor dW2 = p.mlp ? dW2_t.sum(0) : none();
  at::Tensor db2 = has_b2 ? db2_t.sum(0) : none();
  at::Tensor dE = has_E ? dE_t.sum(0) : none();
  at::Tensor dkw = none();
  if (need_dkw) {
    at::Tensor g = dkw_t.sum(0);  // softmax: d/d(log w); none: d/dw
    if (softmax) g = g / key_weight->to(opts.dtype()).expand({p.B, p.M});
    dkw = reduce_to(g, *key_weight);
  }
  if (has_t) dt = reduce_to(dt, *t);
  return {dq, dk, dv, du, dt, dW2, db2, dE, dkw};
}

}  // namespace

TORCH_LIBRARY_IMPL(itnet, CPU, m) {
  m.impl("dense_fwd", &dense_fwd_cpu);
  m.impl("dense_bwd", &dense_bwd_cpu);
}

}  // namespace dense
}  // namespace itnet
