// Backward-buffer helpers shared by the entry points of the ops whose
// backward takes (grad_out, out, lse, grad_lse) (dense, sparse): the checks
// of those inputs, the softmax delta, and the reduction of a gradient to a
// batch-broadcast input's shape.
#pragma once

#include <ATen/ATen.h>

namespace itnet {

// FlashAttention's D = rowsum(dO * O) of the softmax backward (B, H, N). A
// gradient g on the lse output adds P * g to the logit gradient P * (dP - D),
// i.e. it shifts D by -g.
at::Tensor softmax_delta(const at::Tensor& grad_out, const at::Tensor& out,
                         const c10::optional<at::Tensor>& grad_lse);

// Sums a gradient computed at the full batch size over the dims where the
// input was broadcast (size 1), giving the input's shape.
at::Tensor reduce_to(const at::Tensor& grad, const at::Tensor& like);

// Shapes, dtypes and devices of the backward's extra inputs: grad_out and out
// (B, H, N, Dv) in v's dtype, lse and grad_lse (B, H, N) in lse_dtype
// (softmax mode; float32 for the 16-bit CUDA kernels, v's dtype otherwise).
void check_grad_inputs(const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& lse,
                       const c10::optional<at::Tensor>& grad_lse, const at::Tensor& v,
                       int64_t N, bool softmax, at::ScalarType lse_dtype);

}  // namespace itnet
