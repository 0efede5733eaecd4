// Interface between the CUDA entry points of the decay scan (scan_cuda.cpp)
// and its kernels (cuda_fwd.cu, cuda_bwd.cu; their shared device helpers are
// in cuda_common.cuh). Plain C++ and the CUDA runtime API: no ATen, no torch
// headers.
//
// Kernel design (both passes): one thread block per (batch, channel), the
// grid's x dimension running over B * D. The block walks time in chunks of
// kNThreads * kNItems steps, thread i owning the kNItems consecutive steps
// [i * kNItems, (i + 1) * kNItems) of the chunk. Inside a chunk the block
// loops over the state index r; per r the affine step maps
// h -> e_t h + psi_t x_t (scan::Affine, composed with scan::then) are
// composed per thread, then across the block by one cub::BlockScan whose
// prefix callback carries the state from one chunk to the next (the carry of
// every r lives in shared memory between chunks). Everything accumulates in
// float32 (float64 for float64 inputs); y sums phi_r h_r over the r loop in
// registers.
//
// The backward needs h_{t-1} at every step: a first launch of the forward
// kernel (no y) stores checkpoints, the state before every backward chunk
// (CudaScanExtra::ckpt); the backward kernel then walks its chunks from the
// last, recomputes the chunk's states from its checkpoint with a forward
// block scan, and runs the adjoint g_t = e_{t+1} g_{t+1} + phi_t dy_t as a
// second block scan in reversed order (thread aggregates exchanged through
// shared memory so that cub's scan runs over reversed thread order). With a
// single chunk (T <= the backward chunk) there is no checkpoint launch.
//
// Layouts. Every (.., T) tensor a kernel reads or writes with a time index
// is time-major: time stride 1, time padded to a multiple of kTimeAlign
// (CudaScanExtra::Tp), and every other stride a multiple of kTimeAlign, so
// that a thread's kNItems steps are one aligned vector access. The entry
// (scan_cuda.cpp) passes such copies through the strides of ScanParams
// (x_s, dt_s, phi_s, psi_s, ld_s*, y_s; dy_s, dx_s) and of CudaScanExtra
// (ddt, dld, dphi / dpsi); the ScanBwdParams comments' contiguous layouts
// for dld / ddt / dphi / dpsi do not apply to the CUDA kernels.
// Broadcast log-decay dimensions have stride 0; a log-decay that is
// constant in time (ld_st == 0) is read as one value per (b, d, r).
// skip (D,), h0, h_last, dh_last, dh0, dA (B, D, Rk) and dskip (B, D) are
// contiguous.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "scan/params.h"

namespace itnet {
namespace scan {

// Time padding / alignment (in elements) of the time-major buffers.
constexpr int64_t kTimeAlign = 16;

enum class CudaDtype : int { Float = 0, Half = 1, BFloat16 = 2, Double = 3 };

// How the kernels read the decay of step t, state r (chosen by the entry
// from the log-decay's shape; the same choice as the CPU kernels' modes).
enum class CudaDecayMode : int {
  Factored = 0,  // dt[b, t, d] * A[d, r]
  PerStep = 1,   // Tensor form, (.., T, D, 1): exp() once per step, shared by every r
  PerState = 2,  // Tensor form, (.., 1, D, Rk|1): constant in time, exp() once per r and chunk
  Full = 3,      // Tensor form, (.., T, D, Rk)
};

// The kernel geometry (threads per block, steps per thread) for a sequence
// length: short sequences get small blocks so that few threads idle.
struct CudaScanConfig {
  int threads = 128, items = 16;
  int64_t chunk() const { return int64_t(threads) * items; }
};
inline CudaScanConfig cuda_scan_fwd_config(int64_t T) {
  if (T <= 128) return {32, 4};
  if (T <= 512) return {64, 8};
  return {128, 16};
}
inline CudaScanConfig cuda_scan_bwd_config(int64_t T) {
  if (T <= 128) return {32, 4};
  if (T <= 512) return {64, 8};
  return {128, 8};
}

struct CudaScanExtra {
  CudaDecayMode mode = CudaDecayMode::Full;
  int64_t Tp = 0;  // padded time length (multiple of kTimeAlign) of the time-major buffers

  // Checkpoints, accumulation type (float / double), (B, D, n_ckpt, Rk)
  // contiguous: the state before step c * ckpt_every. The forward writes them
  // when ckpt != nullptr (ckpt_every a multiple of its items per thread); the
  // backward reads them (chunk c > 0) when its T needs more than one chunk,
  // with ckpt_every = its chunk length.
  void* ckpt = nullptr;
  int64_t ckpt_every = 0, n_ckpt = 0;

  // Backward gradient buffers (time stride 1 where there is a time index):
  //   ddt     input dtype, (B, D, Tp) through (ddt_sb, ddt_sd)      [Factored]
  //   dld     accumulation type, per batch entry (B, D, ld_R, ld_T) through
  //           (dld_sb, dld_sd, dld_sr); ld_T = Tp in modes PerStep / Full,
  //           1 in mode PerState, where it holds the sum over time   [Tensor]
  //   dphi / dpsi (ScanBwdParams::dphi / dpsi): accumulation type,
  //           (n_parts, B, G, Rk, Tp) through (dpp_spart, dpp_sb, dpp_sg, dpp_sr).
  //           n_parts == 1: every channel of a group adds into the same
  //           rows (float atomics when group_size > 1, zero-filled buffer);
  //           n_parts == group_size: channel d writes part d % group_size
  //           with plain stores (deterministic; the caller sums the parts).
  int64_t ddt_sb = 0, ddt_sd = 0;
  int64_t dld_sb = 0, dld_sd = 0, dld_sr = 0;
  int64_t dpp_spart = 0, dpp_sb = 0, dpp_sg = 0, dpp_sr = 0;
};

// Shared memory (bytes, static + dynamic) of one block of the kernel that
// runs for (T, Rk); it grows with Rk (per-r carries and sums), and the entry
// checks it against the device's limit (the launchers raise the per-kernel
// dynamic limit above 48 KiB when needed).
int64_t cuda_scan_fwd_smem(int64_t T, int64_t Rk, CudaDtype dtype);
int64_t cuda_scan_bwd_smem(int64_t T, int64_t Rk, CudaDtype dtype);

// Forward: writes p.y (when not null; time-major, input dtype), p.h_last
// (when not null; input dtype) and ex.ckpt (when not null). Needs B * D >= 1
// (at most INT_MAX), T >= 1, Rk >= 1. One kernel launch on `stream`; returns
// the error of a cudaFuncSetAttribute call if one failed (the caller checks
// the launch itself with C10_CUDA_KERNEL_LAUNCH_CHECK).
cudaError_t cuda_scan_fwd(const ScanParams& p, const CudaScanExtra& ex, CudaDtype dtype,
                          cudaStream_t stream);

// Backward (after the checkpoint launch when T > cuda_scan_bwd_config(T).chunk()).
// Writes dx (input dtype), dld or ddt + dA, dphi / dpsi, dskip (when p.skip),
// dh0 (when not null). dA / dskip / mode-PerState dld: accumulation type,
// per batch entry. Same conditions and error convention as the forward.
cudaError_t cuda_scan_bwd(const ScanBwdParams& p, const CudaScanExtra& ex, CudaDtype dtype,
                          cudaStream_t stream);


}  // namespace scan
}  // namespace itnet
