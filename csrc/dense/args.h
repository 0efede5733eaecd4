// The arguments of one dense op call, bundled once (DenseArgs::from) by the
// CPU and CUDA entry points and read by prepare() and the CUDA paths: the
// argument list is spelled out in the schema (ITNET_DENSE_ARGS, ops.cpp), in
// the entry signatures the dispatcher needs, and in DenseArgs::from.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace itnet {
namespace dense {

struct DenseArgs {
  c10::optional<at::Tensor> q, k;
  at::Tensor v;
  c10::optional<at::Tensor> u, t, W2, b2, offset_table, q_pos, k_pos, key_weight,
      key_padding_mask, attn_mask;
  std::vector<double> window_lo, window_hi;
  double scale = 1.0;
  int64_t activation = 0;
  bool softmax = true, causal = false;

  // In the schema's order (ITNET_DENSE_ARGS).
  static DenseArgs from(const c10::optional<at::Tensor>& q, const c10::optional<at::Tensor>& k,
                        const at::Tensor& v, const c10::optional<at::Tensor>& u,
                        const c10::optional<at::Tensor>& t, const c10::optional<at::Tensor>& W2,
                        const c10::optional<at::Tensor>& b2,
                        const c10::optional<at::Tensor>& offset_table,
                        const c10::optional<at::Tensor>& q_pos,
                        const c10::optional<at::Tensor>& k_pos,
                        const c10::optional<at::Tensor>& key_weight,
                        const c10::optional<at::Tensor>& key_padding_mask,
                        const c10::optional<at::Tensor>& attn_mask,
                        at::ArrayRef<double> window_lo, at::ArrayRef<double> window_hi,
                        double scale, int64_t activation, bool softmax, bool causal) {
    return DenseArgs{q,         k,
                     v,         u,
                     t,         W2,
                     b2,        offset_table,
                     q_pos,     k_pos,
                     key_weight, key_padding_mask,
                     attn_mask, window_lo.vec(),
                     window_hi.vec(), scale,
                     activation, softmax,
                     causal};
  }
};

// The backward's extra inputs (dense_bwd's leading arguments).
struct GradArgs {
  at::Tensor grad_out, out, lse;
  c10::optional<at::Tensor> grad_lse;
};

}  // namespace dense
}  // namespace itnet
