// Turns the pair kernel's arguments (KernelArgs, common/kernel_args.h) into a
// KernelParams, for the dense and the sparse op alike: shape / dtype / device
// checks (the Python wrapper checks shapes first with friendlier messages;
// these guard direct torch.ops calls), data checks (NaN or non-integer
// positions), and the natural layouts the kernels read. `aux` (default: v's
// dtype) is the dtype of u, t, W2, b2 and the offset table: float32 for the
// 16-bit flash kernels, which accumulate in float32. n_queries >= 0 gives N
// when neither q nor u does (the sparse op takes it from its pair list)
// instead of q_pos. Each op's prepare() adds its own parts on top
// (dense/prepare.h, sparse/prepare.h).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "common/kernel_args.h"
#include "common/kernel_params.h"

namespace itnet {

struct PreparedTerms {
  KernelParams params;
  std::vector<at::Tensor> keep_alive;  // tensors the params point into
  // The checked key padding mask (B, M) bool, or undefined. Padded keys have
  // their k / v / t rows zeroed here; their logits are the op's business.
  at::Tensor pad;
  // The prepared k, v, t the params point into (undefined when absent), for
  // the ops that build other layouts from them (key tiles, key-major copies).
  at::Tensor k, v, t;
};

PreparedTerms prepare_terms(const KernelArgs& a, const c10::optional<at::Tensor>& key_padding_mask,
                            c10::optional<at::ScalarType> aux, int64_t n_queries);

std::string shape_str(const at::Tensor& x);

// x on v's device, in v's dtype; the messages name the argument.
void check_same(const at::Tensor& x, const at::Tensor& v, const char* name);

}  // namespace itnet
