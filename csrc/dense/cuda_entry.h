// The arguments of one dense op call, bundled, and the ATen-level CUDA paths
// that dense_cuda.cpp dispatches between:
//  - exact kernels (cuda_fwd.cu / cuda_bwd.cu) for float32 / float64, and for
//    float16 / bfloat16 beyond the flash limits, on float32 copies;
//  - flash kernels (flash/) for float16 / bfloat16 on sm_80+.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

#include "dense/prepare.h"

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

  Prepared prepare(bool backward, c10::optional<at::ScalarType> aux = c10::nullopt) const {
    return dense::prepare(q, k, v, u, t, W2, b2, offset_table, q_pos, k_pos, key_weight,
                          key_padding_mask, attn_mask, window_lo, window_hi, scale, activation,
                          softmax, causal, /*key_tile=*/0, backward, aux);
  }
};

// The backward's extra inputs.
struct GradArgs {
  at::Tensor grad_out, out, lse;
  c10::optional<at::Tensor> grad_lse;
};

// flash/entry_cuda.cpp. Whether the flash kernels take this call (dtype,
// device capability, head dims, R, offset table, shared memory).
bool flash_fwd_supported(const DenseArgs& a);
bool flash_bwd_supported(const DenseArgs& a);
std::tuple<at::Tensor, at::Tensor> flash_dense_fwd(const DenseArgs& a);
GradTuple flash_dense_bwd(const GradArgs& g, const DenseArgs& a);

}  // namespace dense
}  // namespace itnet
