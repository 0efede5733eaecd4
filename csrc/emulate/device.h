// The CUDA language for an emulated translation unit (force-included before
// every .cu file of the emulated build, as nvcc includes cuda_runtime.h):
// the execution-space keywords, the built-in variables, barriers, warp
// collectives, atomics and the device math the kernels use, each on top of
// the host runtime (runtime.h). Kernels compile unchanged with g++; only
// shared memory and launches go through the macros of common/cuda_launch.h.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#include "emulate/runtime.h"

#ifndef ITNET_EMULATE
#error "emulate/device.h is for the emulated build (ITNET_EMULATE) only"
#endif

// ---- execution spaces and attributes ---------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __constant__ static
// A raw __shared__ would be a per-fiber local here and hide every race:
// shared memory is declared through ITNET_SHARED / ITNET_DYNAMIC_SHARED.
#define __shared__ ITNET_use_ITNET_SHARED_not___shared__


#include "vector_types.h"  // shim/: CUDA's vector and launch-shape types

namespace itnet {
namespace emu {
// The built-in variables read the running fiber's ids.
inline uint3 as_uint3(const Dim& d) { return {d.x, d.y, d.z}; }
}  // namespace emu
}  // namespace itnet

#define threadIdx (::itnet::emu::as_uint3(::itnet::emu::ids().thread_idx))
#define blockIdx (::itnet::emu::as_uint3(::itnet::emu::ids().block_idx))
#define blockDim (::itnet::emu::as_uint3(::itnet::emu::ids().block_dim))
#define gridDim (::itnet::emu::as_uint3(::itnet::emu::ids().grid_dim))
constexpr int warpSize = 32;

// ---- barriers ----------------------------------------------------------------
inline void __syncthreads() { ::itnet::emu::sync_threads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::itnet::emu::sync_warp(mask); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ---- warp collectives ------------------------------------------------------------
namespace itnet {
namespace emu {
inline unsigned linear_lane() {
  const ThreadIds& t = ids();
  const unsigned linear =
      t.thread_idx.x + t.block_dim.x * (t.thread_idx.y + t.block_dim.y * t.thread_idx.z);
  return linear % 32u;
}

// src(lane) -> the lane whose value lane receives, or -1 for "its own".
template <class T, class Src>
T shuffle(const char* op, unsigned mask, T v, Src src_of) {
  static_assert(std::is_trivially_copyable<T>::value, "shuffled values must be trivially copyable");
  T all[32];
  unsigned arrived = 0;
  warp_exchange(op, mask, &v, sizeof(T), all, &arrived);
  const int src = src_of(static_cast<int>(linear_lane()));
  if (src < 0) return v;
  if (!((arrived >> src) & 1u)) {
    // reading a lane that is not taking part: undefined on a GPU, poison here
    T poison;
    std::memset(static_cast<void*>(&poison), 0xFF, sizeof(T));
    return poison;
  }
  return all[src];
}
}  // namespace emu
}  // namespace itnet

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return ::itnet::emu::shuffle("__shfl_sync", mask, v, [=](int lane) {
    return (lane / width) * width + ((src % width) + width) % width;
  });
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return ::itnet::emu::shuffle("__shfl_xor_sync", mask, v, [=](int lane) {
    const int s = lane ^ lane_mask;
    return s / width == lane / width ? s : -1;
  });
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::itnet::emu::shuffle("__shfl_down_sync", mask, v, [=](int lane) {
    const int s = lane + static_cast<int>(delta);
    return s / width == lane / width ? s : -1;
  });
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::itnet::emu::shuffle("__shfl_up_sync", mask, v, [=](int lane) {
    const int s = lane - static_cast<int>(delta);
    return s >= 0 && s / width == lane / width ? s : -1;
  });
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  int all[32];
  unsigned arrived = 0;
  const int mine = pred != 0;
  ::itnet::emu::warp_exchange("__ballot_sync", mask, &mine, sizeof(int), all, &arrived);
  unsigned bits = 0;
  for (int l = 0; l < 32; ++l)
    if (((arrived >> l) & 1u) && all[l]) bits |= 1u << l;
  return bits;
}
inline int __any_sync(unsigned mask, int pred) {
  int all[32];
  unsigned arrived = 0;
  const int mine = pred != 0;
  ::itnet::emu::warp_exchange("__any_sync", mask, &mine, sizeof(int), all, &arrived);
  for (int l = 0; l < 32; ++l)
    if (((arrived >> l) & 1u) && all[l]) return 1;
  return 0;
}
inline int __all_sync(unsigned mask, int pred) {
  int all[32];
  unsigned arrived = 0;
  const int mine = pred != 0;
  ::itnet::emu::warp_exchange("__all_sync", mask, &mine, sizeof(int), all, &arrived);
  for (int l = 0; l < 32; ++l)
    if (((arrived >> l) & 1u) && !all[l]) return 0;
  return 1;
}
inline unsigned __activemask() { return ::itnet::emu::live_lanes(); }

// ---- integer intrinsics -------------------------------------------------------------
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }

// ---- reinterpretation ----------------------------------------------------------------
inline long long __double_as_longlong(double x) {
  long long r;
  std::memcpy(&r, &x, sizeof r);
  return r;
}
inline double __longlong_as_double(long long x) {
  double r;
  std::memcpy(&r, &x, sizeof r);
  return r;
}
inline int __float_as_int(float x) {
  int r;
  std::memcpy(&r, &x, sizeof r);
  return r;
}
inline float __int_as_float(int x) {
  float r;
  std::memcpy(&r, &x, sizeof r);
  return r;
}

// ---- atomics (fibers of one block run on one host thread, blocks in turn; the
// builtins keep them atomic should that ever change) ----------------------------------
namespace itnet {
namespace emu {
// Floating-point atomic add as a compare-and-swap loop on the bits.
template <class F, class U>
inline F atomic_add_float(F* a, F x) {
  U* p = reinterpret_cast<U*>(a);
  U old = __atomic_load_n(p, __ATOMIC_RELAXED);
  for (;;) {
    F o;
    std::memcpy(&o, &old, sizeof o);
    const F n = o + x;
    U nb;
    std::memcpy(&nb, &n, sizeof nb);
    if (__atomic_compare_exchange_n(p, &old, nb, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
      return o;
  }
}
}  // namespace emu
}  // namespace itnet
inline float atomicAdd(float* a, float x) {
  return ::itnet::emu::atomic_add_float<float, uint32_t>(a, x);
}
inline double atomicAdd(double* a, double x) {
  return ::itnet::emu::atomic_add_float<double, uint64_t>(a, x);
}
inline int atomicAdd(int* a, int x) { return __atomic_fetch_add(a, x, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* a, unsigned x) {
  return __atomic_fetch_add(a, x, __ATOMIC_RELAXED);
}
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long x) {
  return __atomic_fetch_add(a, x, __ATOMIC_RELAXED);
}
inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long cmp,
                                    unsigned long long val) {
  __atomic_compare_exchange_n(a, &cmp, val, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return cmp;
}
inline int atomicCAS(int* a, int cmp, int val) {
  __atomic_compare_exchange_n(a, &cmp, val, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return cmp;
}

// ---- loads and math -----------------------------------------------------------------------
template <class T>
inline T __ldg(const T* p) {
  return *p;
}
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
// Generic -> shared state space (only mma.cuh's PTX wrappers use it; their
// emulated bodies take the generic pointer).
inline unsigned long long __cvta_generic_to_shared(const void* p) {
  return reinterpret_cast<unsigned long long>(p);
}

// ---- launches -------------------------------------------------------------------------------
namespace itnet {
namespace emu {
inline Dim as_dim(dim3 d) { return {d.x, d.y, d.z}; }

// kernel<<<grid, block, smem, stream>>>(args...) of common/cuda_launch.h: the
// arguments are converted to the kernel's parameter types (copies, as a real
// launch takes them) and every thread calls the kernel with its own copy.
template <class... P>
struct Launcher {
  void (*kernel)(P...);
  const char* name;
  dim3 grid, block;
  size_t smem;

  template <class... A>
  void operator()(A&&... a) const {
    struct Closure {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...> args;
    } c{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(a)...)};
    launch(
        reinterpret_cast<const void*>(kernel), name, as_dim(grid), as_dim(block), smem,
        [](void* p) {
          const Closure& cl = *static_cast<const Closure*>(p);
          std::tuple<std::decay_t<P>...> mine = cl.args;  // this thread's parameters
          std::apply(cl.kernel, mine);
        },
        &c);
  }
};

template <class... P, class S>
Launcher<P...> make_launcher(void (*kernel)(P...), const char* name, dim3 grid, dim3 block,
                             size_t smem, S /*stream*/) {
  return Launcher<P...>{kernel, name, grid, block, smem};
}
}  // namespace emu
}  // namespace itnet
