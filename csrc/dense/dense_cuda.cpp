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

GradTuple dense_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& lse,
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
  // one gradient buffer each (copies = 1), accumulated with atomics where
  // several warps contribute
  const Backward bw = prepare_backward(pr, grad_out, out, lse, grad_lse, v, u, t, b2, offset_table,
                                       key_weight, softmax, /*copies=*/1);
  cuda_dense_bwd(bw.params, v.scalar_type() == at::kDouble, at::cuda::getCurrentCUDAStream());
  return bw.finish(u, t, key_weight);
}

}  // namespace

TORCH_LIBRARY_IMPL(itnet, CUDA, m) {
  m.impl("dense_fwd", &dense_fwd_cuda);
  m.impl("dense_bwd", &dense_bwd_cuda);
}

}  // namespace dense
}  // namespace itnet
