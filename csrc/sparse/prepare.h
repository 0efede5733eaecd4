// Argument checks and layouts of the sparse (pair-list) integral transform,
// shared by the CPU and CUDA entry points. The kernel terms go through the
// dense op's prepare() (same checks, same messages); this adds the pair list:
// row_ptr (B, N + 1), col_idx (B, E), log_w (B, E), with the value checks
// that need the data (row_ptr order and range, keys in [0, M), no NaN / +inf
// log-weight). They guard direct torch.ops calls; the Python wrapper checks
// first with friendlier messages.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

#include "sparse/params.h"

namespace itnet {
namespace sparse {

struct Prepared {
  SparseParams params;
  std::vector<at::Tensor> keep_alive;
};

Prepared prepare(const c10::optional<at::Tensor>& q, const c10::optional<at::Tensor>& k,
                 const at::Tensor& v, const c10::optional<at::Tensor>& u,
                 const c10::optional<at::Tensor>& t, const c10::optional<at::Tensor>& W2,
                 const c10::optional<at::Tensor>& b2,
                 const c10::optional<at::Tensor>& offset_table,
                 const c10::optional<at::Tensor>& q_pos, const c10::optional<at::Tensor>& k_pos,
                 const at::Tensor& row_ptr, const at::Tensor& col_idx,
                 const c10::optional<at::Tensor>& log_w, at::ArrayRef<double> window_lo,
                 at::ArrayRef<double> window_hi, double scale, int64_t activation, bool softmax,
                 bool key_major = false);

using GradTuple = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                             at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The backward's inputs (dout, lse, delta) and gradient buffers. Key-side and
// parameter gradients get a leading dim of `copies` (CPU: threads, CUDA: 1).
struct Backward {
  SparseBwdParams params;
  bool key_major = false;  // dk / dv buffers (copies, B, M, H, D), transposed by finish()
  std::vector<at::Tensor> keep_alive;
  at::Tensor dq, dk, dv, du, dt, dW2, db2, dE, dlog_w;
  // Gradients in sparse_bwd's output order (q, k, v, u, t, W2, b2,
  // offset_table, log_w), summed over copies and reduced to the inputs'
  // (possibly batch-broadcast) shapes; empty tensors for absent inputs.
  GradTuple finish(const c10::optional<at::Tensor>& u, const c10::optional<at::Tensor>& t) const;
};

Backward prepare_backward(const Prepared& fwd, const at::Tensor& grad_out, const at::Tensor& out,
                          const at::Tensor& lse, const c10::optional<at::Tensor>& grad_lse,
                          const at::Tensor& v, const c10::optional<at::Tensor>& u,
                          const c10::optional<at::Tensor>& t, const c10::optional<at::Tensor>& b2,
                          const c10::optional<at::Tensor>& offset_table,
                          const c10::optional<at::Tensor>& log_w, bool softmax, int64_t copies);

}  // namespace sparse
}  // namespace itnet
