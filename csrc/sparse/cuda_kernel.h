// Interface between the CUDA entry points of the sparse (pair-list) integral
// transform (sparse_cuda.cpp) and its kernels (cuda_fwd.cu, cuda_bwd.cu; their
// shared device helpers are in cuda_common.cuh). Plain C++ and the CUDA
// runtime API: no ATen, no torch headers.
//
// Kernel design (the algorithm of cpu_kernel.cpp, warp by warp):
//  - The forward and the query side of the backward give one warp to one
//    query row (b, i). The warp walks the row's entries 32 at a time: lane x
//    reads entry e0 + x and decides whether the pair takes part (present:
//    log_w != -inf; inside the window); the pairs that do are packed into a
//    per-warp chunk of up to 32 pairs in shared memory (key, log-weight,
//    offset-table row). A full chunk is evaluated with one pair per lane:
//    the logits of every head (content dot product over Dk, then the pair MLP
//    act(u_i + t_j + E[o]) projected on W2 / b2, HC heads at a time in
//    registers; the hidden values go to shared memory when a second head
//    group or the backward needs them again). Lanes that hold no pair read
//    nothing (an absent pair may name key -1).
//  - Forward: per head, the online softmax across chunks (common/math.h:
//    softmax_rescale / softmax_shift, warp max and sum; the state (m, l) per
//    head in shared memory) or, in `none` mode, a = l exp(lw) (sparse/pair.h);
//    then P.V with the lanes over Dv, accumulated in place in the row's
//    output (zero-filled, owned by the warp). A row without pairs keeps
//    out = 0 and gets lse = -inf.
//  - Backward, query side ("row pass"): the logits again, P = exp(l + lw -
//    lse), dP = <dO_i, v_j>, dS via sparse/pair.h; dq, du and dlog_w are owned
//    by the row's warp (plain read-modify-write, no atomics); dW2 / db2 go to
//    the warp's own slice of a partial-sum buffer (plain stores, summed by
//    the entry point); dk, dv, dt and the offset-table gradient dE are
//    scattered with atomicAdd.
//  - Deterministic mode (at::globalContext().deterministicAlgorithms()): the
//    row pass does not touch dk / dv / dt and writes dE into its per-warp
//    partial sums; a second, key-owned pass ("key pass") gives one warp to
//    one key (b, j), walks that key's present pairs in the order of a stable
//    sort by key (built by the entry with ATen), recomputes their logits and
//    sums dk_j, dv_j and dt_j in that fixed order. No floating-point atomics
//    remain; every partial sum is reduced by ATen in a fixed order.
// The row pass runs a fixed number of warps (CudaBwdPlan::warps), each
// walking rows w, w + warps, w + 2 warps, ...: its per-warp partial sums are
// deterministic for a given plan (which depends on the sizes and the GPU
// only).
//
// Layouts: those of sparse::prepare() (KernelParams, common/kernel_params.h:
// q (B, H, N, Dk), k (B, H, M, Dk), v (B, H, M, Dv) contiguous, u (B, N, R),
// t (B, M, R), positions float64 with batch strides) and of
// prepare_backward() with copies = 1 (every gradient buffer zero-filled).
// Element types: float and double.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "sparse/params.h"

namespace itnet {
namespace sparse {

// What the launchers need to know about the GPU (from the entry point's
// device properties).
struct CudaDevice {
  int64_t smem_optin = 48 * 1024;  // cudaDevAttrMaxSharedMemoryPerBlockOptin
  int64_t sm_count = 1;
};

// Launch geometry of the backward's row pass, decided before the entry point
// allocates the per-warp partial sums (warps x ...).
struct CudaBwdPlan {
  int warps_per_block = 1;
  int64_t blocks = 0;
  int64_t warps = 0;            // blocks * warps_per_block: slices of the partial sums
  int64_t smem_per_warp = 0;    // dynamic shared memory bytes per warp (row pass)
  int64_t key_warps_per_block = 1;  // key pass (deterministic mode)
  int64_t key_smem_per_warp = 0;
};

// The CUDA-only operands of the backward.
struct CudaBwdExtra {
  bool deterministic = false;
  // Per-warp partial sums of the row pass, zero-filled, contiguous:
  //   dW2_part (warps, H, R) when the MLP term is on, db2_part (warps, H) when
  //   b2 is given, dE_part (warps, O, R) in deterministic mode when the offset
  //   table is given (otherwise dE is accumulated atomically in params.dE).
  void* dW2_part = nullptr;
  void* db2_part = nullptr;
  void* dE_part = nullptr;
  // Key pass (deterministic mode): the present pairs sorted by (b, key):
  //   perm (B * E): global entry ids b * E + e, the first key_ptr[B * M] of
  //   them present, in the order of a stable sort by b * M + col_idx;
  //   key_ptr (B * M + 1): the pairs of key (b, j) are perm[key_ptr[b M + j]
  //   .. key_ptr[b M + j + 1]); entry_row (B, E): the query row of each listed
  //   entry.
  const int64_t* perm = nullptr;
  const int64_t* key_ptr = nullptr;
  const int64_t* entry_row = nullptr;
};

// Forward. p.f.out (B, H, N, Dv) must be zero-filled (the kernel accumulates
// in place); p.f.lse (B, H, N) is written for every row in softmax mode.
// Launches nothing when B * N == 0 or H == 0 (the caller fills lse then).
// Raises (TORCH_CHECK) when the per-warp shared memory exceeds the device's
// limit. Runs on `stream`, no synchronisation.
void cuda_sparse_fwd(const SparseParams& p, bool is_double, const CudaDevice& dev,
                     cudaStream_t stream);

// The row pass's geometry (shared memory, warps, blocks) for this call; raises
// when one warp's shared memory does not fit.
CudaBwdPlan cuda_sparse_bwd_plan(const SparseBwdParams& bp, bool is_double, bool deterministic,
                                 const CudaDevice& dev);

// Backward: the row pass (and in deterministic mode the key pass), on
// `stream`. Gradient buffers as prepare_backward(copies = 1) made them, the
// partial sums of `ex` sized for `plan.warps`. Launches nothing when
// B * N == 0 or H == 0.
void cuda_sparse_bwd(const SparseBwdParams& bp, const CudaBwdExtra& ex, const CudaBwdPlan& plan,
                     bool is_double, cudaStream_t stream);

}  // namespace sparse
}  // namespace itnet
