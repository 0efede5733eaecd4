// The arguments of one sparse op call, bundled once (SparseArgs::from) for the
// CPU and CUDA entry points and read by prepare(), prepare_backward() and
// Backward::finish(): the pair kernel's arguments (KernelArgs, shared with the
// dense op) and the pair list, in CSR form. SparseArgs::from's parameters are
// those of the dispatcher's entry functions (OpEntry, common/kernel_args.h).
#pragma once

#include <ATen/ATen.h>

#include "common/kernel_args.h"

namespace itnet {
namespace sparse {

using itnet::GradArgs;

struct SparseArgs : KernelArgs {
  at::Tensor row_ptr, col_idx;    // (B, N + 1), (B, E) int64
  c10::optional<at::Tensor> log_w;  // (B, E)

  // In the schema's order (sparse_fwd, ops.cpp).
  static SparseArgs from(const c10::optional<at::Tensor>& q, const c10::optional<at::Tensor>& k,
                         const at::Tensor& v, const c10::optional<at::Tensor>& u,
                         const c10::optional<at::Tensor>& t, const c10::optional<at::Tensor>& W2,
                         const c10::optional<at::Tensor>& b2,
                         const c10::optional<at::Tensor>& offset_table,
                         const c10::optional<at::Tensor>& q_pos,
                         const c10::optional<at::Tensor>& k_pos, const at::Tensor& row_ptr,
                         const at::Tensor& col_idx, const c10::optional<at::Tensor>& log_w,
                         at::ArrayRef<double> window_lo, at::ArrayRef<double> window_hi,
                         double scale, int64_t activation, bool softmax) {
    SparseArgs a;
    static_cast<KernelArgs&>(a) = KernelArgs{q,     k,     v,        u,
                                             t,     W2,    b2,       offset_table,
                                             q_pos, k_pos, window_lo.vec(), window_hi.vec(),
                                             scale, activation, softmax};
    a.row_ptr = row_ptr;
    a.col_idx = col_idx;
    a.log_w = log_w;
    return a;
  }
};

}  // namespace sparse
}  // namespace itnet
