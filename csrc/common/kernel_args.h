// The arguments of the pair kernel, common to the dense and sparse ops, as
// tensors (KernelArgs: the logit terms and the support they share), and the
// backward's extra inputs (GradArgs). Each op's bundle derives from
// KernelArgs (dense/args.h DenseArgs, sparse/args.h SparseArgs), is built once
// from the dispatcher's arguments and read by prepare_terms() and the op's
// own prepare().
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace itnet {

struct KernelArgs {
  c10::optional<at::Tensor> q, k;
  at::Tensor v;
  c10::optional<at::Tensor> u, t, W2, b2, offset_table, q_pos, k_pos;
  std::vector<double> window_lo, window_hi;
  double scale = 1.0;
  int64_t activation = 0;
  bool softmax = true;
};

// The backward's extra inputs (the leading arguments of dense_bwd / sparse_bwd).
struct GradArgs {
  at::Tensor grad_out, out, lse;
  c10::optional<at::Tensor> grad_lse;
};

}  // namespace itnet
