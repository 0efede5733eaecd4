// Turns the op's arguments (DenseArgs, dense/args.h) into a FwdParams, shared
// by the CPU and CUDA entry points: the pair kernel through prepare_terms()
// (common/prepare_terms.h: checks, natural layouts, padded keys zeroed), then
// the dense op's own parts: per-key weights (finite, positive) and padding as
// a key bias / scale, the attention mask, causality. key_tile > 0 also builds
// the key-tile-transposed copies kT, vT (backward) and tT of the CPU kernels
// (see params.h). `aux` (default: v's dtype) is the dtype of u, t, W2, b2, the
// offset table, the key bias / scale and the attention mask: float32 for the
// 16-bit flash kernels, which accumulate in float32. n_queries >= 0 gives N
// when neither q nor u does, instead of q_pos.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

#include "common/grad.h"
#include "dense/args.h"
#include "dense/params.h"

namespace itnet {
namespace dense {

struct Prepared {
  FwdParams params;
  std::vector<at::Tensor> keep_alive;  // tensors the params point into
};

Prepared prepare(const DenseArgs& a, int64_t key_tile, bool backward,
                 c10::optional<at::ScalarType> aux = c10::nullopt, int64_t n_queries = -1);


using GradTuple = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                             at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The backward's extra inputs (dout, lse, delta = rowsum(dO * O) - grad_lse)
// and its gradient buffers, shared by the CPU and CUDA entry points. Key-side
// gradients (dk, dv, dt) are single buffers; the others (dq, du, dW2, db2,
// dE, dkw) get a leading dim of `copies` (CPU: one per thread, CUDA: 1, with
// atomics) that finish() sums. Which gradients exist follows the arguments,
// not the params' pointers (a zero-size input still gets a gradient).
struct Backward {
  BwdParams params;
  std::vector<at::Tensor> keep_alive;
  at::Tensor dq, dk, dv, du, dt, dW2, db2, dE, dkw;
  // Gradients in dense_bwd's output order, summed over copies, reduced to
  // the inputs' (possibly batch-broadcast) shapes; empty for absent inputs.
  GradTuple finish(const DenseArgs& a) const;
};

Backward prepare_backward(const Prepared& fwd, const GradArgs& g, const DenseArgs& a,
                          int64_t copies);

// The key-weight gradient from the kernels' per-key sums (B, M): those are
// d/d(log w) in softmax mode, d/dw in `none` mode; reduced to key_weight's shape.
at::Tensor key_weight_grad(at::Tensor per_key, const at::Tensor& key_weight, bool softmax);

}  // namespace dense
}  // namespace itnet
