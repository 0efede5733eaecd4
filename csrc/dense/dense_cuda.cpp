// CUDA entry points of the dense integral transform: the same checks and
// layouts as the CPU entry points (prepare() with key_tile = 0: no
// transposed key tiles), the same output conventions (empty tensors for
// gradients of absent inputs, batch-broadcast inputs reduced with reduce_to,
// the key-weight gradient converted from d/d(log w) in softmax mode), and the
// kernels of cuda_fwd.cu / cuda_bwd.cu launched on the current stream of v's
// device. Compiled only in CUDA builds (setup.py: *_cuda.cpp).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "dense/cuda_kernel.h"
#include "dense/prepare.h"

namespace itnet {
namespace dense {
namespace {

// The CUDA kernels of this build run in float32 and float64; half precision
// comes with the tensor-core kernels.
void check_cuda_value(const at::Tensor& v) {
  TORCH_CHECK(v.is_cuda(), "v: expected a CUDA tensor (other inputs are on CUDA), got a tensor on ",
              v.device());
  TORCH_CHECK(v.scalar_type() == at::kFloat || v.scalar_type() == at::kDouble,
              "v: expected dtype float32 or float64 on CUDA (the dense CUDA kernels do not "
              "support ", v.scalar_type(), " yet), got ", v.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> dense_fwd_cuda(
    const c10::optional<at::Tensor>& q, const c10::optional<at::Tensor>& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& u, const c10::optional<at::Tensor>& t,
    const c10::optional<at::Tensor>& W2, const c10::optional<at::Tensor>& b2,
    const c10::optional<at::Tensor>& offset_table, const c10::optional<at::Tensor>& q_pos,
    const c10::optional<at::Tensor>& k_pos, const c10::optional<at::Tensor>& key_weight,
    const c10::optional<at::Tensor>& key_padding_mask, const c10::optional<at::Tensor>& attn_mask,
    at::ArrayRef<double> window_lo, at::ArrayRef<double> window_hi, double scale,
    int64_t activation, bool softmax, bool causal) {
  check_cuda_value(v);
  const c10::cuda::CUDAGuard guard(v.device());
  Prepared pr = prepare(q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos, key_weight,
                        key_padding_mask, attn_mask, window_lo, window_hi, scale, activation,
                        softmax, causal, /*key_tile=*/0, /*backward=*/false);
  FwdParams& p = pr.params;
  // the kernel accumulates the output rows in place
  at::Tensor out = at::zeros({p.B, p.H, p.N, p.Dv}, v.options());
  at::Tensor lse = softmax ? at::empty({p.B, p.H, p.N}, v.options()) : at::empty({0}, v.options());
  p.out = out.data_ptr();
  p.lse = softmax ? lse.data_ptr() : nullptr;
  cuda_dense_fwd(p, v.scalar_type() == at::kDouble, at::cuda::getCurrentCUDAStream());
  // pr.keep_alive is released here; the caching allocator keeps the memory
  // for the kernel, which runs on the same stream
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor>
dense_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& lse,
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
  check_cuda_value(v);
  const c10::cuda::CUDAGuard guard(v.device());
  Prepared pr = prepare(q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos, key_weight,
                        key_padding_mask, attn_mask, window_lo, window_hi, scale, activation,
                        softmax, causal, /*key_tile=*/0, /*backward=*/true);
  const FwdParams& p = pr.params;
  check_grad_inputs(grad_out, out, lse, grad_lse, v, p, softmax);  // shapes, dtypes, devices
  const auto opts = v.options();
  const auto dtype = v.scalar_type();

  BwdParams bp;
  bp.f = p;
  at::Tensor dout = grad_out.contiguous();
  at::Tensor lse_c, delta;
  if (softmax) {
    lse_c = lse.contiguous();
    // FlashAttention's D = rowsum(dO * O); a gradient g on lse shifts it by -g
    delta = (dout * out).sum(-1);
    if (grad_lse.has_value() && grad_lse->defined()) delta = delta - *grad_lse;
    delta = delta.contiguous();
    bp.lse = lse_c.data_ptr();
    bp.delta = delta.data_ptr();
  }
  bp.dout = dout.data_ptr();

  // Which gradients exist follows the arguments, not the params' pointers:
  // an input with no elements (N, M, Dk or R = 0) has a null data pointer but
  // still gets a (zero) gradient of its shape.
  auto none = [&]() { return at::empty({0}, opts); };
  auto zeros_or_none = [&](bool given, at::IntArrayRef shape) {
    return given ? at::zeros(shape, opts) : none();
  };
  const bool content = p.content;
  const bool mlp = p.mlp;
  at::Tensor dq = zeros_or_none(content, {p.B, p.H, p.N, p.Dk});
  at::Tensor dk = zeros_or_none(content, {p.B, p.H, p.M, p.Dk});
  at::Tensor dv = at::zeros({p.B, p.H, p.M, p.Dv}, opts);
  at::Tensor du = zeros_or_none(mlp && u.has_value(), {p.B, p.N, p.R});
  at::Tensor dt = zeros_or_none(mlp && t.has_value(), {p.B, p.M, p.R});
  at::Tensor dW2 = zeros_or_none(mlp, {p.H, p.R});
  at::Tensor db2 = zeros_or_none(mlp && b2.has_value(), {p.H});
  at::Tensor dE = offset_table.has_value() ? at::zeros(offset_table->sizes(), opts) : none();
  const bool need_dkw = key_weight.has_value();
  at::Tensor dkw = zeros_or_none(need_dkw, {p.B, p.M});
  // the kernels test these pointers only where the matching input pointer
  // is non-null, i.e. where the input (and so the gradient) has elements
  bp.dq = content ? dq.data_ptr() : nullptr;
  bp.dk = content ? dk.data_ptr() : nullptr;
  bp.dv = dv.data_ptr();
  bp.du = du.numel() ? du.data_ptr() : nullptr;
  bp.dt = dt.numel() ? dt.data_ptr() : nullptr;
  bp.dW2 = dW2.numel() ? dW2.data_ptr() : nullptr;
  bp.db2 = db2.numel() ? db2.data_ptr() : nullptr;
  bp.dE = dE.numel() ? dE.data_ptr() : nullptr;
  bp.dkw = dkw.numel() ? dkw.data_ptr() : nullptr;
  bp.need_dkw = need_dkw && dkw.numel() > 0;

  cuda_dense_bwd(bp, dtype == at::kDouble, at::cuda::getCurrentCUDAStream());

  if (mlp && u.has_value()) du = reduce_to(du, *u);
  if (mlp && t.has_value()) dt = reduce_to(dt, *t);
  if (need_dkw) {
    at::Tensor g = dkw;  // softmax: d/d(log w); none: d/dw
    if (softmax) g = g / key_weight->to(dtype).expand({p.B, p.M});
    dkw = reduce_to(g, *key_weight);
  }
  return {dq, dk, dv, du, dt, dW2, db2, dE, dkw};
}

}  // namespace

TORCH_LIBRARY_IMPL(itnet, CUDA, m) {
  m.impl("dense_fwd", &dense_fwd_cuda);
  m.impl("dense_bwd", &dense_bwd_cuda);
}

}  // namespace dense
}  // namespace itnet
