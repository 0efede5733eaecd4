// CUDA kernels of the low-rank op's backward (design in cuda_kernel.h): the
// per-row softmax terms and the elementwise maps' input gradient. The
// contractions around them are batched matrix products in the entry
// (lowrank_cuda.cpp); the formulas are feature.h's.
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "lowrank/cuda_common.cuh"
#include "lowrank/cuda_kernel.h"
#include "common/cuda_launch.h"

namespace itnet {
namespace lowrank {
namespace cuda {
namespace {

constexpr int64_t kMaxBlocks = 65536;  // grid-stride loops: a bounded grid for any size

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <class T>
__global__ void __launch_bounds__(kThreads)
    elementwise_grad_kernel(const T* __restrict__ x, const T* __restrict__ dphi,
                            T* __restrict__ dx, int64_t count, FeatureMap fmap) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < count;
       i += stride)
    dx[i] = dphi[i] * elementwise_feature_grad(fmap, x[i]);
}

// One warp per row (warp-uniform loop: the shuffles see all 32 lanes); the
// lanes run over Dv, the dot product g . num is reduced in a fixed order.
template <class T>
__global__ void __launch_bounds__(kThreads)
    softmax_row_grads_kernel(const T* __restrict__ g, const T* __restrict__ num,
                             const T* __restrict__ den, T eps, T* __restrict__ dn,
                             T* __restrict__ dden, int64_t rows, int64_t Dv) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t warps_per_block = kThreads / kWarp;
  const int64_t nwarps = static_cast<int64_t>(gridDim.x) * warps_per_block;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * warps_per_block + threadIdx.x / kWarp;
       r < rows; r += nwarps) {
    const T* gr = g + r * Dv;
    const T* nr = num + r * Dv;
    T dot = T(0);
    for (int64_t d = lane; d < Dv; d += kWarp) dot += gr[d] * nr[d];
    dot = warp_sum(dot);
    // out = num / den: dn = g / den, dden = -(g . out) / den; 0 for a cut row
    const T den_r = den[r];
    const bool kept = row_kept(den_r, eps);
    T* dr = dn + r * Dv;
    for (int64_t d = lane; d < Dv; d += kWarp) dr[d] = kept ? gr[d] / den_r : T(0);
    if (lane == 0) dden[r] = kept ? denominator_grad(dot, den_r) : T(0);
  }
}

template <class T>
void launch_elementwise_grad(const FeatureParams& p, cudaStream_t stream) {
  const int64_t count = p.slices * p.n * p.Dk;
  if (count == 0) return;
  const int64_t blocks = std::min(ceil_div(count, kThreads), kMaxBlocks);
  ITNET_LAUNCH(static_cast<unsigned>(blocks), kThreads, 0, stream, elementwise_grad_kernel<T>)(
      static_cast<const T*>(p.x), static_cast<const T*>(p.dphi), static_cast<T*>(p.dx), count,
      p.fmap);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <class T>
void launch_row_grads(int64_t rows, int64_t Dv, const void* g, const void* num, const void* den,
                      double eps, void* dn, void* dden, cudaStream_t stream) {
  if (rows == 0) return;
  const int64_t blocks = std::min(ceil_div(rows, kThreads / kWarp), kMaxBlocks);
  ITNET_LAUNCH(static_cast<unsigned>(blocks), kThreads, 0, stream, softmax_row_grads_kernel<T>)(
      static_cast<const T*>(g), static_cast<const T*>(num), static_cast<const T*>(den),
      static_cast<T>(eps), static_cast<T*>(dn), static_cast<T*>(dden), rows, Dv);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace cuda

void cuda_elementwise_feature_grad(const FeatureParams& p, bool is_double, cudaStream_t stream) {
  if (is_double) cuda::launch_elementwise_grad<double>(p, stream);
  else cuda::launch_elementwise_grad<float>(p, stream);
}

void cuda_softmax_row_grads(int64_t rows, int64_t Dv, const void* g, const void* num,
                            const void* den, double eps, void* dn, void* dden, bool is_double,
                            cudaStream_t stream) {
  if (is_double) cuda::launch_row_grads<double>(rows, Dv, g, num, den, eps, dn, dden, stream);
  else cuda::launch_row_grads<float>(rows, Dv, g, num, den, eps, dn, dden, stream);
}

}  // namespace lowrank
}  // namespace itnet
