// The arguments of the pair kernel, common to the dense and sparse ops, as
// tensors (KernelArgs: the logit terms and the support they share), and the
// backward's extra inputs (GradArgs). Each op's bundle derives from
// KernelArgs (dense/args.h DenseArgs, sparse/args.h SparseArgs), is built once
// from the dispatcher's arguments (OpEntry) and read by prepare_terms() and
// the op's own prepare().
#pragma once

#include <ATen/ATen.h>

#include <tuple>
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

// The functions the dispatcher calls for an op's forward and backward, written
// once for every backend: their parameters are those of Bundle::from (the
// schema's arguments, in its order), and they hand the bundle, with the
// backward's extra inputs, to the backend's Fwd(const Bundle&) /
// Bwd(const GradArgs&, const Bundle&). Registered as
// m.impl("dense_fwd", &OpEntry<DenseArgs>::fwd<&dense_fwd_cpu>).
template <class Bundle, class From = decltype(Bundle::from)>
struct OpEntry;

template <class Bundle, class... Args>
struct OpEntry<Bundle, Bundle(Args...)> {
  template <auto Fwd>
  static std::tuple<at::Tensor, at::Tensor> fwd(Args... args) {
    return Fwd(Bundle::from(args...));
  }

  template <auto Bwd>
  static auto bwd(const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& lse,
                  const c10::optional<at::Tensor>& grad_lse, Args... args) {
    return Bwd(GradArgs{grad_out, out, lse, grad_lse}, Bundle::from(args...));
  }
};

}  // namespace itnet
