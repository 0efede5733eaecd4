// Parameters of the decay scan (docs/design.md section 2, low-rank causal kernel with a decay):
//
//   h_{t,d,r} = exp(a_{t,d,r}) h_{t-1,d,r} + psi_{t,g(d),r} x_{t,d},   h_{-1} = h0
//   y_{t,d}   = sum_r phi_{t,g(d),r} h_{t,d,r} + skip_d x_{t,d}
//
// a is the log-decay, in one of two forms (DecayForm). Channel d belongs to
// group g(d) = d / group_size of phi / psi.
//
// Every (B, T, ...) tensor is described by element strides, so a backend can
// hand its kernels whatever layout they read best (the CPU entry passes the
// contiguous (B, T, D) tensors; a GPU entry may pass time-major copies). The
// log-decay strides are 0 on broadcast dimensions. Plain struct, no torch
// types: shared by the C++ and CUDA translation units.
#pragma once

#include <cstdint>

namespace itnet {
namespace scan {

enum class DecayForm : int {
  Tensor = 0,    // a_{b,t,d,r} = log_decay[b*ld_sb + t*ld_st + d*ld_sd + r*ld_sr]
  Factored = 1,  // a_{b,t,d,r} = dt[b,t,d] * A[d*A_sd + r*A_sr] (Mamba's form, never materialized)
};

// A (B, T, C) (or (B, T, G, R)) tensor's element strides.
struct Strides3 {
  int64_t b = 0, t = 0, c = 0;
};
struct Strides4 {
  int64_t b = 0, t = 0, g = 0, r = 0;
};

// The forward can save the state before every kCkptEvery-th step (the
// `checkpoint` flag of decay_scan_fwd), so that the backward need not run the
// recurrence once more just to find where its chunks start.
constexpr int64_t kCkptEvery = 64;
inline int64_t num_checkpoints(int64_t T) { return (T + kCkptEvery - 1) / kCkptEvery; }

struct ScanParams {
  int64_t B = 0, T = 0, D = 0, Rk = 0;
  int64_t G = 1;           // groups of phi / psi
  int64_t group_size = 1;  // D / G channels per group

  DecayForm form = DecayForm::Tensor;
  const void* log_decay = nullptr;  // Tensor form
  int64_t ld_sb = 0, ld_st = 0, ld_sd = 0, ld_sr = 0;
  const void* dt = nullptr;         // Factored form: (B, T, D)
  Strides3 dt_s;
  const void* A = nullptr;          // Factored form: (D, Rk)
  int64_t A_sd = 0, A_sr = 0;

  const void* x = nullptr;  // (B, T, D)
  Strides3 x_s;
  const void* phi = nullptr;  // (B, T, G, Rk)
  const void* psi = nullptr;
  Strides4 phi_s, psi_s;
  const void* skip = nullptr;  // (D,) or null
  const void* h0 = nullptr;    // (B, D, Rk) contiguous, or null (zeros)

  void* y = nullptr;  // (B, T, D)
  Strides3 y_s;
  void* h_last = nullptr;  // (B, D, Rk) contiguous: the state after the last step
  // (B, D, num_checkpoints(T), Rk) contiguous, or null: the state before step
  // c * kCkptEvery (written by the CPU forward when given)
  void* ckpt = nullptr;
};

// The backward reads ScanParams' inputs plus the cotangents and writes the
// gradients. Reductions over batch, time or channels that the strides make
// necessary are split so that no two work items write the same element:
//   - dld: (B, ld_T, D, ld_R) contiguous, ld_T in {1, T}, ld_R in {1, Rk}: the
//     log-decay gradient summed over broadcast time / state, per batch entry
//     (the caller sums over B when log_decay broadcast it).
//   - dA, dskip: per batch entry, (B, D, Rk) / (B, D); the caller sums over B.
//   - dphi, dpsi: (n_parts, B, T, G, Rk) contiguous partial sums over channel
//     blocks (a backend chooses n_parts and how channels map to parts; the
//     caller sums over the parts).
struct ScanBwdParams : ScanParams {
  const void* dy = nullptr;  // (B, T, D)
  Strides3 dy_s;
  const void* dh_last = nullptr;  // (B, D, Rk) contiguous, or null (zeros)
  const void* ckpt_in = nullptr;  // the forward's checkpoints (see ScanParams::ckpt), or null

  void* dx = nullptr;  // (B, T, D)
  Strides3 dx_s;
  void* dld = nullptr;  // Tensor form
  int64_t dld_T = 0, dld_R = 0;
  void* ddt = nullptr;  // Factored form: (B, T, D) contiguous
  void* dA = nullptr;   // Factored form: (B, D, Rk) contiguous
  void* dphi = nullptr;
  void* dpsi = nullptr;
  int64_t n_parts = 1;
  void* dskip = nullptr;  // (B, D), null when skip is null
  void* dh0 = nullptr;    // (B, D, Rk) contiguous
};

}  // namespace scan
}  // namespace itnet
