// Argument checks and parameter setup of the decay-scan ops, shared by the
// CPU and CUDA entry points (itnet::decay_scan_fwd / decay_scan_bwd).
//
// The ops take the normalized arguments of itnet_ext.functional.decay_scan:
//   x (B, T, D); log_decay (B|1, T|1, D, Rk|1) or None; dt (B, T, D) and
//   A (D, Rk) or None (exactly one of log_decay and the pair (dt, A));
//   phi, psi (B, T, G, Rk); skip (D,) or None; initial_state (B, D, Rk) or None.
// Bad arguments raise c10::Error (ValueError / RuntimeError in Python) naming
// the argument and what was expected.
#pragma once

#include <ATen/ATen.h>

#include "scan/params.h"

namespace itnet {
namespace scan {

struct Prepared {
  // contiguous copies (or the inputs themselves) that the params point into
  at::Tensor x, log_decay, dt, A, phi, psi, skip, h0;
  ScanParams params;  // inputs filled in; outputs (y, h_last) left to the caller
};

// `op` names the op in messages; `dtypes_ok` says which dtypes the backend takes
// (checked here so that every message has the same form).
Prepared prepare(const at::Tensor& x, const c10::optional<at::Tensor>& log_decay,
                 const c10::optional<at::Tensor>& dt, const c10::optional<at::Tensor>& A,
                 const at::Tensor& phi, const at::Tensor& psi,
                 const c10::optional<at::Tensor>& skip,
                 const c10::optional<at::Tensor>& initial_state, const char* op,
                 at::ArrayRef<at::ScalarType> dtypes_ok);

// The backward's extra inputs: grad_y (B, T, D) and grad_final_state
// (B, D, Rk) or None, on x's device, in x's dtype. Returns contiguous copies.
std::pair<at::Tensor, at::Tensor> check_cotangents(const Prepared& pr, const at::Tensor& grad_y,
                                                   const c10::optional<at::Tensor>& grad_final,
                                                   const char* op);

// The forward's checkpoints, if given and not empty: (B, D, num_checkpoints(T), Rk),
// on x's device, in x's dtype. Returns a contiguous copy, or an undefined tensor.
at::Tensor check_checkpoints(const Prepared& pr, const c10::optional<at::Tensor>& checkpoints,
                             const char* op);

// Gradient of the log-decay in the shape of the `log_decay` argument from the
// per-batch buffer (B, ld_T, D, ld_R) a kernel wrote (sums over B if needed).
at::Tensor reduce_log_decay_grad(const at::Tensor& per_batch, const at::Tensor& log_decay);

}  // namespace scan
}  // namespace itnet
