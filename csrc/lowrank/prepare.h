// Argument checks and layouts of the low-rank op and its features op, shared
// by the CPU and CUDA entry points. Inputs are converted to contiguous tensors
// of the compute dtype (float32 for float16 / bfloat16 / float32, float64 for
// float64): the kernels accumulate in it whatever the input precision, which
// is what keeps half-precision sums over long sequences finite. They guard
// direct torch.ops calls; the Python wrapper checks first with friendlier
// messages.
#pragma once

#include <ATen/ATen.h>

#include "lowrank/params.h"

namespace itnet {
namespace lowrank {

struct Prepared {
  LowRankParams params;
  at::Tensor q, k, v, W, Wt;  // contiguous, compute dtype (W, Wt undefined unless Favor)
  at::ScalarType compute;
};

// `op` names the calling op in the messages.
Prepared prepare(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const c10::optional<at::Tensor>& projection, int64_t feature_map, bool softmax,
                 double eps, const char* op);

// The backward's cotangent: checked against out's shape (B, H, N, Dv), in the
// compute dtype, contiguous.
at::Tensor prepare_grad_out(const at::Tensor& grad_out, const Prepared& pr, const char* op);

struct PreparedFeatures {
  FeatureParams params;
  at::Tensor x, W, Wt;
  at::ScalarType compute;
  std::vector<int64_t> out_shape;  // x's shape with the last dim F
};

PreparedFeatures prepare_features(const at::Tensor& x, const c10::optional<at::Tensor>& projection,
                                  int64_t feature_map, int64_t stabilize, const char* op);

// float32 for half inputs, else the input dtype.
inline at::ScalarType compute_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Row ranges per (b, h) slice for the parallel passes: enough ranges that
// slices * ranges keeps every thread busy, none shorter than kMinRows rows.
int64_t row_splits(int64_t slices, int64_t rows, int64_t threads);
constexpr int64_t kMinRows = 256;

}  // namespace lowrank
}  // namespace itnet

namespace itnet {
namespace lowrank {

// The key pass's partial sums, (slices, splits, F, Dv) / (slices, splits, F)
// / (slices, splits) with running maxima m, merged in a fixed order
// (device-agnostic ATen ops): c = max over the splits, each split's sums
// rescaled by exp(m - c) (0 for a split that saw no key), summed.
struct KeyState {
  at::Tensor S, z, c;  // (slices, F, Dv), (slices, F), (slices,) with -inf replaced by 0
};
KeyState merge_key_state(const at::Tensor& S_parts, const at::Tensor& z_parts,
                         const at::Tensor& m_parts);

// First row of range `s` of `splits` over `rows` rows.
inline int64_t split_begin(int64_t rows, int64_t splits, int64_t s) { return rows * s / splits; }

}  // namespace lowrank
}  // namespace itnet
