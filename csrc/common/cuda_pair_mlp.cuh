// The pair MLP's device helpers, shared by the CUDA kernels of the dense and
// sparse ops (dense/cuda_pair.cuh, sparse/cuda_common.cuh): the rows of u, t
// and the offset table E that one pair reads, and the pre-activation of one
// hidden unit from them. Both ops' kernels read the MLP operands in their
// natural layouts (KernelParams, common/kernel_params.h), so one pair's rows
// are found the same way in either. Included only by .cu files.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/cuda_warp.cuh"
#include "common/kernel_params.h"

namespace itnet {
namespace cuda {

// Pre-activation of hidden unit r of the pair MLP: u_i + (t_j + E[o(i, j)]),
// the operand order of the CPU kernels. Null rows count as 0.
template <class T>
__device__ __forceinline__ T pair_preact(const T* ui, const T* tj, const T* er, int64_t r) {
  const T te = (tj ? tj[r] : T(0)) + (er ? er[r] : T(0));
  return (ui ? ui[r] : T(0)) + te;
}

// Rows of u, t and E that the pair (query i, key j, offset-table row o) of
// batch b reads (null when absent).
template <class T>
struct MlpRows {
  const T* u;
  const T* t;
  const T* e;
};

template <class T>
__device__ __forceinline__ MlpRows<T> mlp_rows(const KernelParams& p, int64_t b, int64_t i,
                                               int64_t j, int64_t o) {
  MlpRows<T> rows;
  rows.u = p.u ? cptr<T>(p.u) + (b * p.N + i) * p.R : nullptr;
  rows.t = p.t ? cptr<T>(p.t) + (b * p.M + j) * p.R : nullptr;  // (B, M, R) on CUDA
  rows.e = p.E ? cptr<T>(p.E) + o * p.R : nullptr;
  return rows;
}

}  // namespace cuda
}  // namespace itnet
