// Device helpers shared by the CUDA kernels of the pair ops (dense/cuda_*.cu,
// sparse/cuda_*.cu): warp reductions, a portable atomic add and typed views
// of the params' raw pointers (the pair MLP's helpers: common/cuda_pair_mlp.cuh).
// Included only by .cu files.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace itnet {
namespace cuda {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

template <class T>
__device__ __forceinline__ T warp_sum(T x) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) x += __shfl_xor_sync(kFullMask, x, o);
  return x;
}

template <class T>
__device__ __forceinline__ T warp_max(T x) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) {
    const T y = __shfl_xor_sync(kFullMask, x, o);
    x = y > x ? y : x;
  }
  return x;
}

__device__ __forceinline__ void atomic_add(float* addr, float x) { atomicAdd(addr, x); }

__device__ __forceinline__ void atomic_add(double* addr, double x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 600
  // no native double atomicAdd before sm_60
  unsigned long long* a = reinterpret_cast<unsigned long long*>(addr);
  unsigned long long old = *a, assumed;
  do {
    assumed = old;
    old = atomicCAS(a, assumed, __double_as_longlong(x + __longlong_as_double(assumed)));
  } while (assumed != old);
#else
  atomicAdd(addr, x);
#endif
}

// Typed views of the params' raw pointers.
template <class T>
__device__ __forceinline__ const T* cptr(const void* p) {
  return static_cast<const T*>(p);
}

}  // namespace cuda
}  // namespace itnet
