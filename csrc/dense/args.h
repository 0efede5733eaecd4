// The arguments of one dense op call, bundled once (DenseArgs::from) for the
// CPU and CUDA entry points and read by prepare() and the CUDA paths: the
// argument list is spelled out in the schema (ITNET_DENSE_ARGS, ops.cpp) and
// in DenseArgs::from, whose parameters the dispatcher's entry functions take
// (OpEntry, common/kernel_args.h). The
// pair kernel's arguments (KernelArgs) are shared with the sparse op; the
// dense op adds per-key weights, key padding, an attention mask and causality.
#pragma once

#include <ATen/ATen.h>

#include "common/kernel_args.h"

namespace itnet {
namespace dense {

using itnet::GradArgs;

struct DenseArgs : KernelArgs {
  c10::optional<at::Tensor> key_weight, key_padding_mask, attn_mask;
  bool causal = false;

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
    DenseArgs a;
    static_cast<KernelArgs&>(a) = KernelArgs{q,     k,     v,        u,
                                             t,     W2,    b2,       offset_table,
                                             q_pos, k_pos, window_lo.vec(), window_hi.vec(),
                                             scale, activation, softmax};
    a.key_weight = key_weight;
    a.key_padding_mask = key_padding_mask;
    a.attn_mask = attn_mask;
    a.causal = causal;
    return a;
  }
};

}  // namespace dense
}  // namespace itnet
