// CUDA kernels of the low-rank features op (and of the backward's
// materialized features; design in cuda_kernel.h): FAVOR+ features per
// (slice, 64-row tile) with the None / Row / Slice stabilizers, and the
// elementwise maps as a grid-stride loop.
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>

#include "lowrank/cuda_common.cuh"
#include "lowrank/cuda_kernel.h"
#include "common/cuda_launch.h"

namespace itnet {
namespace lowrank {
namespace cuda {
namespace {

constexpr int kRows = 64;  // rows per block
constexpr int kFeats = 32;  // features per step
constexpr int kELd = kFeats + 1;

template <class T>
struct FavorArgs {
  const T* x;
  const T* W;
  const T* c;  // (slices,), Slice only
  T* phi;
  int64_t n, Dk, F, rtiles;
  Stabilizer stab;
  T in_scale, feat_scale;
};

// Row: the exponents are written to phi as they come (the row max is not
// known before the last feature chunk), the running row max is kept in
// shared memory, and a second sweep over the block's own rows turns them into
// features. Those rows were written by this block only, and __syncthreads
// makes a block's global writes visible to all its threads.
template <class T>
__global__ void __launch_bounds__(kThreads, 2) favor_features_kernel(const FavorArgs<T> a) {
  using Tile = FavorTile<T, kRows, kFeats>;
  ITNET_SHARED(typename Tile::Stage, st);
  ITNET_SHARED(T, sq, [kRows]);
  ITNET_SHARED(T, e_s, [kRows * kELd]);
  ITNET_SHARED(T, m_s, [kRows]);
  const int tid = static_cast<int>(threadIdx.x);
  BlockIndex bi(blockIdx.x);
  const int64_t rt = bi.next(a.rtiles);
  const int64_t sl = bi.rest;
  const int64_t n = a.n, Dk = a.Dk, F = a.F;
  const int64_t i0 = rt * kRows;
  const int nrows = static_cast<int>(n - i0 < kRows ? n - i0 : kRows);
  const T* xb = a.x + (sl * n + i0) * Dk;
  T* pb = a.phi + (sl * n + i0) * F;
  const bool row = a.stab == Stabilizer::Row;
  const T c = a.stab == Stabilizer::Slice ? a.c[sl] : T(0);
  if (tid < kRows) m_s[tid] = neg_inf<T>();
  __syncthreads();

  for (int64_t f0 = 0; f0 < F; f0 += kFeats) {
    T e[Tile::PER];
    Tile::exponents(st, sq, xb, nrows, a.W, F, f0, Dk, a.in_scale, e);
    const int f = Tile::feat();
#pragma unroll
    for (int t = 0; t < Tile::PER; ++t) {
      const int i = Tile::row(t);
      const bool valid = i < nrows && f0 + f < F;
      if (row) {
        e_s[i * kELd + f] = valid ? e[t] : neg_inf<T>();
        if (valid) pb[i * F + f0 + f] = e[t];
      } else if (valid) {
        pb[i * F + f0 + f] = favor_feature(e[t], c, a.feat_scale);
      }
    }
    if (row) {
      __syncthreads();
      if (tid < kRows) {
        T mx = m_s[tid];
        for (int ff = 0; ff < kFeats; ++ff) mx = max_like_std(mx, e_s[tid * kELd + ff]);
        m_s[tid] = mx;
      }
    }
    __syncthreads();  // e_s and sq are rewritten by the next step
  }
  if (row) {
    const int64_t count = static_cast<int64_t>(nrows) * F;
    for (int64_t idx = tid; idx < count; idx += kThreads) {
      const int i = static_cast<int>(idx / F);
      pb[idx] = favor_feature(pb[idx], softmax_shift(m_s[i]), a.feat_scale);
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    elementwise_features_kernel(const T* __restrict__ x, T* __restrict__ phi, int64_t count,
                                FeatureMap fmap) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < count;
       i += stride)
    phi[i] = elementwise_feature(fmap, x[i]);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <class T>
void launch_features(const FeatureParams& p, const void* c, cudaStream_t stream) {
  const int64_t count = p.slices * p.n * p.F;
  if (count == 0) return;
  if (p.fmap != FeatureMap::Favor) {
    // grid-stride: a bounded grid for any count
    const int64_t blocks = std::min<int64_t>(ceil_div(count, kThreads), 65536);
    ITNET_LAUNCH(static_cast<unsigned>(blocks), kThreads, 0, stream,
                 elementwise_features_kernel<T>)(
        static_cast<const T*>(p.x), static_cast<T*>(p.phi), count, p.fmap);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  TORCH_CHECK(p.stab != Stabilizer::Slice || c != nullptr,
              "lowrank features (CUDA): the Slice stabilizer needs c");
  FavorArgs<T> a;
  a.x = static_cast<const T*>(p.x);
  a.W = static_cast<const T*>(p.W);
  a.c = static_cast<const T*>(c);
  a.phi = static_cast<T*>(p.phi);
  a.n = p.n;
  a.Dk = p.Dk;
  a.F = p.F;
  a.rtiles = ceil_div(p.n, kRows);
  a.stab = p.stab;
  a.in_scale = favor_input_scale<T>(p.Dk);
  a.feat_scale = favor_feature_scale<T>(p.F);
  const int64_t blocks = p.slices * a.rtiles;
  TORCH_CHECK(blocks <= INT_MAX, "lowrank features (CUDA): ", blocks,
              " blocks, more than a grid holds (2^31 - 1); split the batch");
  ITNET_LAUNCH(static_cast<unsigned>(blocks), kThreads, 0, stream, favor_features_kernel<T>)(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace cuda

void cuda_features(const FeatureParams& p, const void* c, bool is_double, cudaStream_t stream) {
  if (is_double) cuda::launch_features<double>(p, c, stream);
  else cuda::launch_features<float>(p, c, stream);
}

}  // namespace lowrank
}  // namespace itnet
