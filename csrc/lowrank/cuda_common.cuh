// Device helpers of the low-rank op's CUDA kernels (cuda_fwd.cu, cuda_bwd.cu,
// cuda_features.cu; design in cuda_kernel.h): block size, the FAVOR+ exponent
// tile shared by every kernel that featurizes rows, and small reductions. The
// per-element math is feature.h's (the code the CPU kernels run). Included
// only by .cu files.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/math.h"
#include "lowrank/feature.h"
#include "lowrank/params.h"

namespace itnet {
namespace lowrank {
namespace cuda {

constexpr int kThreads = 256;  // every kernel runs 256-thread blocks
constexpr int kWarp = 32;

// Columns of Dk staged in shared memory per step of the FAVOR+ projection.
// 16 for double keeps the largest kernel's static shared memory well under
// the 48 KiB static limit.
template <class T>
struct DkChunk {
  static constexpr int value = sizeof(T) == 4 ? 32 : 16;
};

// std::max's NaN behaviour (the first argument unless a < b), as the CPU max.
template <class T>
__device__ __forceinline__ T max_like_std(T a, T b) {
  return a < b ? b : a;
}

// FAVOR+ exponents of a tile of ROWS rows x FEATS features:
//   e_{j,f} = W_{f0+f} . x'_j - |x'_j|^2 / 2,   x' = x * in_scale,
// with Dk walked in chunks of DC columns through shared memory (x' rows and W
// rows, padded by one element so that the lanes, which run over features,
// read W without bank conflicts while reading one broadcast x' row).
// Thread `tid` owns the PER pairs idx = tid + kThreads * t: row idx / FEATS,
// feature idx % FEATS = tid % FEATS (kThreads is a multiple of FEATS). The
// dot product runs over d = 0 .. Dk-1 in order whatever DC, so two kernels
// with different tile shapes compute bitwise the same exponents (the key
// stabilizer from exponent_max is then exactly the max of the key pass's
// exponents).
template <class T, int ROWS, int FEATS>
struct FavorTile {
  static constexpr int DC = DkChunk<T>::value;
  static constexpr int LD = DC + 1;
  static constexpr int PER = ROWS * FEATS / kThreads;
  static_assert(ROWS * FEATS % kThreads == 0, "tile must be a multiple of the block");
  static_assert(kThreads % FEATS == 0, "a thread keeps one feature column");
  static_assert(ROWS <= kThreads, "one thread per row sums |x'|^2");

  // Staging buffers; callers may alias them with buffers they fill only after
  // exponents() returns (no thread reads them after its last barrier).
  struct Stage {
    T x[ROWS * LD];
    T w[FEATS * LD];
  };

  static __device__ __forceinline__ int row(int t) {
    return (static_cast<int>(threadIdx.x) + kThreads * t) / FEATS;
  }
  static __device__ __forceinline__ int feat() { return static_cast<int>(threadIdx.x) % FEATS; }

  // x: the tile's first row (row stride Dk), nrows <= ROWS valid rows; W (F, Dk).
  // Rows >= nrows and features >= F get finite garbage-free values (zeros
  // staged); the caller masks them. Contains block barriers: every thread of
  // the block must call it.
  static __device__ void exponents(Stage& st, T* sq, const T* __restrict__ x, int nrows,
                                   const T* __restrict__ W, int64_t F, int64_t f0, int64_t Dk,
                                   T in_scale, T (&e)[PER]) {
    const int tid = static_cast<int>(threadIdx.x);
    const int f = feat();
#pragma unroll
    for (int t = 0; t < PER; ++t) e[t] = T(0);
    T sq_acc = T(0);
    for (int64_t d0 = 0; d0 < Dk; d0 += DC) {
      for (int idx = tid; idx < ROWS * DC; idx += kThreads) {
        const int r = idx / DC, d = idx % DC;
        T val = T(0);
        if (r < nrows && d0 + d < Dk) val = x[static_cast<int64_t>(r) * Dk + d0 + d] * in_scale;
        st.x[r * LD + d] = val;
      }
      for (int idx = tid; idx < FEATS * DC; idx += kThreads) {
        const int r = idx / DC, d = idx % DC;
        T val = T(0);
        if (f0 + r < F && d0 + d < Dk) val = W[(f0 + r) * Dk + d0 + d];
        st.w[r * LD + d] = val;
      }
      __syncthreads();
      const T* wr = st.w + f * LD;
#pragma unroll
      for (int t = 0; t < PER; ++t) {
        const T* xr = st.x + row(t) * LD;
        T acc = e[t];
#pragma unroll 8
        for (int d = 0; d < DC; ++d) acc += wr[d] * xr[d];
        e[t] = acc;
      }
      if (tid < ROWS) {
        const T* xr = st.x + tid * LD;
        for (int d = 0; d < DC; ++d) sq_acc += xr[d] * xr[d];
      }
      __syncthreads();  // before the next chunk (or an aliasing caller) overwrites st
    }
    if (tid < ROWS) sq[tid] = sq_acc;
    __syncthreads();
#pragma unroll
    for (int t = 0; t < PER; ++t) e[t] -= T(0.5) * sq[row(t)];
    // sq is read above: a caller reusing it must pass a barrier first (every
    // caller's next write to sq is inside the next exponents() call, after its
    // first barrier).
  }
};

template <class T>
__device__ __forceinline__ T warp_sum(T x) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// First row of range s of `splits` over `rows` rows: prepare.h's split_begin
// (host only there), so that every backend cuts the same ranges.
__host__ __device__ __forceinline__ int64_t range_begin(int64_t rows, int64_t splits, int64_t s) {
  return rows * s / splits;
}

// Splits (blockIdx.x) into the mixed-radix digits of a flattened grid.
struct BlockIndex {
  int64_t rest;
  __device__ explicit BlockIndex(int64_t id) : rest(id) {}
  __device__ int64_t next(int64_t radix) {
    const int64_t d = rest % radix;
    rest /= radix;
    return d;
  }
};

}  // namespace cuda
}  // namespace lowrank
}  // namespace itnet
