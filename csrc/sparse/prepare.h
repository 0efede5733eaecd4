// Argument checks and layouts of the sparse (pair-list) integral transform,
// shared by the CPU and CUDA entry points. The pair kernel goes through
// prepare_terms() (common/prepare_terms.h: the dense op's checks and
// messages); this adds the pair list:
// row_ptr (B, N + 1), col_idx (B, E), log_w (B, E), with the value checks
// that need the data (row_ptr order and range, keys in [0, M), no NaN / +inf
// log-weight). They guard direct torch.ops calls; the Python wrapper checks
// first with friendlier messages.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

#include "sparse/args.h"
#include "sparse/params.h"

namespace itnet {
namespace sparse {

struct Prepared {
  SparseParams params;
  std::vector<at::Tensor> keep_alive;
};

// key_major: also the key-major copies of k and v (sparse/params.h).
Prepared prepare(const SparseArgs& a, bool key_major = false);

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
  GradTuple finish(const SparseArgs& a) const;
};

Backward prepare_backward(const Prepared& fwd, const GradArgs& g, const SparseArgs& a,
                          int64_t copies);

}  // namespace sparse
}  // namespace itnet
