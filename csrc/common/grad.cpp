#include "common/grad.h"

#include <vector>

namespace itnet {

at::Tensor softmax_delta(const at::Tensor& grad_out, const at::Tensor& out,
                         const c10::optional<at::Tensor>& grad_lse) {
  at::Tensor delta = (grad_out * out).sum(-1);
  if (grad_lse.has_value() && grad_lse->defined()) delta = delta - *grad_lse;
  return delta;
}

at::Tensor reduce_to(const at::Tensor& grad, const at::Tensor& like) {
  at::Tensor g = grad;
  for (int64_t d = 0; d < like.dim(); ++d)
    if (like.size(d) == 1 && g.size(d) != 1) g = g.sum(d, /*keepdim=*/true);
  return g.reshape(like.sizes());
}

void check_grad_inputs(const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& lse,
                       const c10::optional<at::Tensor>& grad_lse, const at::Tensor& v,
                       int64_t N, bool softmax, at::ScalarType lse_dtype) {
  const std::vector<int64_t> out_shape = {v.size(0), v.size(1), N, v.size(3)};
  const std::vector<int64_t> row_shape = {v.size(0), v.size(1), N};
  auto check = [&](const at::Tensor& x, const char* name, const std::vector<int64_t>& shape,
                   at::ScalarType dtype) {
    TORCH_CHECK(x.sizes() == at::IntArrayRef(shape), name, ": expected shape ",
                at::IntArrayRef(shape), ", got ", x.sizes());
    TORCH_CHECK(x.scalar_type() == dtype, name, ": expected dtype ", dtype, ", got ",
                x.scalar_type());
    TORCH_CHECK(x.device() == v.device(), name, ": expected a tensor on ", v.device(), ", got ",
                x.device());
  };
  check(grad_out, "grad_out", out_shape, v.scalar_type());
  check(out, "out", out_shape, v.scalar_type());
  if (softmax) {
    check(lse, "lse", row_shape, lse_dtype);
    if (grad_lse.has_value() && grad_lse->defined())
      check(*grad_lse, "grad_lse", row_shape, lse_dtype);
  }
}

}  // namespace itnet
