// Turns the op's arguments into a FwdParams: shape / dtype / device checks
// (the Python wrapper checks shapes first with friendlier messages; these
// guard direct torch.ops calls), data checks (NaN or non-integer positions,
// non-positive weights), and the layouts the kernels read. Shared by the CPU
// and CUDA entry points. key_tile > 0 also builds the key-tile-transposed
// copies kT, vT (backward) and tT of the CPU kernels (see params.h).
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "dense/params.h"

namespace itnet {
namespace dense {

struct Prepared {
  FwdParams params;
  std::vector<at::Tensor> keep_alive;  // tensors the params point into
};

Prepared prepare(const c10::optional<at::Tensor>& q, const c10::optional<at::Tensor>& k,
                 const at::Tensor& v, const c10::optional<at::Tensor>& u,
                 const c10::optional<at::Tensor>& t, const c10::optional<at::Tensor>& W2,
                 const c10::optional<at::Tensor>& b2,
                 const c10::optional<at::Tensor>& offset_table,
                 const c10::optional<at::Tensor>& q_pos, const c10::optional<at::Tensor>& k_pos,
                 const c10::optional<at::Tensor>& key_weight,
                 const c10::optional<at::Tensor>& key_padding_mask,
                 const c10::optional<at::Tensor>& attn_mask, at::ArrayRef<double> window_lo,
                 at::ArrayRef<double> window_hi, double scale, int64_t activation, bool softmax,
                 bool causal, int64_t key_tile, bool backward);

// Shapes, dtypes and devices of the extra inputs of the backward.
void check_grad_inputs(const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& lse,
                       const c10::optional<at::Tensor>& grad_lse, const at::Tensor& v,
                       const FwdParams& p, bool softmax);

// Sums a gradient computed at the full batch size over the dims where the
// input was broadcast (size 1), giving the input's shape.
at::Tensor reduce_to(const at::Tensor& grad, const at::Tensor& like);

}  // namespace dense
}  // namespace itnet
