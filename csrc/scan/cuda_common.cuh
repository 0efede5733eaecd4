// Device helpers shared by the decay scan's CUDA kernels (cuda_fwd.cu,
// cuda_bwd.cu): accumulation types and conversions, vectorized loads of a
// thread's time steps, the per-step decays, the block-scan operator and
// prefix callbacks on scan::Affine maps, and the host side both passes end
// with (launch, kernel geometry and decay mode as template arguments, shared
// memory, dtype dispatch). Included only by .cu files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cstring>
#include <type_traits>

#include "common/math.h"
#include "scan/cuda_kernel.h"
#include "scan/step.h"
#include "common/cuda_launch.h"

namespace itnet {
namespace scan {
namespace cuda {

template <class T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <class T>
using Acc = typename AccOf<T>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T>
__device__ __forceinline__ T from_acc(Acc<T> v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// N consecutive elements as whole 16-byte (or 8-byte) words: p must be
// aligned to min(16, N * sizeof(T)) bytes (the time-major layout contract).
template <int N, class T>
struct VecWord {
  static constexpr int kBytes = N * int(sizeof(T));
  static_assert(kBytes % 8 == 0, "vector accesses of at least 8 bytes");
  using W = std::conditional_t<kBytes % 16 == 0, uint4, uint2>;
  static constexpr int kWords = kBytes / int(sizeof(W));
};

template <int N, class T, class A>
__device__ __forceinline__ void load_items(const T* __restrict__ p, A (&out)[N]) {
  using VW = VecWord<N, T>;
  typename VW::W w[VW::kWords];
  const auto* q = reinterpret_cast<const typename VW::W*>(p);
#pragma unroll
  for (int j = 0; j < VW::kWords; ++j) w[j] = __ldg(q + j);
  T v[N];
  memcpy(v, w, sizeof(v));
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = to_acc(v[i]);
}

template <int N, class T, class A>
__device__ __forceinline__ void store_items(T* __restrict__ p, const A (&in)[N]) {
  using VW = VecWord<N, T>;
  T v[N];
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = from_acc<T>(in[i]);
  typename VW::W w[VW::kWords];
  memcpy(w, v, sizeof(v));
  auto* q = reinterpret_cast<typename VW::W*>(p);
#pragma unroll
  for (int j = 0; j < VW::kWords; ++j) q[j] = w[j];
}

// The thread's kItems steps from a time-major row (p = the row + t0): zeros
// for an idle thread and for the steps at or past T (the padding).
template <int N, class T, class A>
__device__ __forceinline__ void load_steps(const T* p, bool active, int nvalid, A (&out)[N]) {
  if (active) {
    load_items(p, out);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = A(0);
  }
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = i < nvalid ? out[i] : A(0);
}

// What the decay of a step needs once per chunk, before the loop over r:
// dt (Factored) or e = exp(a) (PerStep; 1 past T); unused otherwise.
template <CudaDecayMode kMode, int N, class T>
__device__ __forceinline__ void chunk_decay(const T* dt, const T* ld, int64_t t0, bool active,
                                            int nvalid, Acc<T> (&pre)[N]) {
  using A = Acc<T>;
  if constexpr (kMode == CudaDecayMode::Factored) {
    load_steps(dt + t0, active, nvalid, pre);
  } else if constexpr (kMode == CudaDecayMode::PerStep) {
    load_steps(ld + t0, active, nvalid, pre);
#pragma unroll
    for (int i = 0; i < N; ++i) pre[i] = i < nvalid ? Ops<A>::exp(pre[i]) : A(1);
  }
}

// e_t = exp(a_t) of state r for the thread's steps (1 past T: identity steps).
// ld: the (b, d) log-decay row (Tensor form), A_row: A[d, :] (Factored).
template <CudaDecayMode kMode, int N, class T>
__device__ __forceinline__ void step_decays(const T* ld, int64_t ld_sr, const T* A_row,
                                            int64_t A_sr, int64_t r, int64_t t0, bool active,
                                            int nvalid, const Acc<T> (&pre)[N], Acc<T> (&e)[N]) {
  using A = Acc<T>;
  if constexpr (kMode == CudaDecayMode::Factored) {
    const A a = to_acc(A_row[r * A_sr]);
#pragma unroll
    for (int i = 0; i < N; ++i) e[i] = i < nvalid ? Ops<A>::exp(pre[i] * a) : A(1);
  } else if constexpr (kMode == CudaDecayMode::PerStep) {
#pragma unroll
    for (int i = 0; i < N; ++i) e[i] = pre[i];
  } else if constexpr (kMode == CudaDecayMode::PerState) {
    const A er = Ops<A>::exp(to_acc(ld[r * ld_sr]));
#pragma unroll
    for (int i = 0; i < N; ++i) e[i] = i < nvalid ? er : A(1);
  } else {
    load_steps(ld + r * ld_sr + t0, active, nvalid, e);
#pragma unroll
    for (int i = 0; i < N; ++i) e[i] = i < nvalid ? Ops<A>::exp(e[i]) : A(1);
  }
}

// Step t of the forward as an element of the block scan: h -> advance(e, h,
// psi, x) is affine in h, slope e, intercept advance(0, 0, psi, x) (= psi x).
template <class V>
__device__ __forceinline__ Affine<V> step_map(V e, V psi, V x) {
  return {e, advance(V(0), V(0), psi, x)};
}

// Step t of the adjoint as an element of the (reversed) block scan: the
// carry c_{t+1} = dLoss/dh_t from step t + 1 on maps to
// c_t = carry_back(state_grad(c_{t+1}, phi_t, dy_t), e_t), affine in c_{t+1}:
// slope carry_back(1, e) (= e), intercept carry_back(state_grad(0, phi, dy), e).
template <class V>
__device__ __forceinline__ Affine<V> adjoint_map(V e, V phi, V dy) {
  return {carry_back(V(1), e), carry_back(state_grad(V(0), phi, dy), e)};
}

template <class V>
__device__ __forceinline__ Affine<V> identity_map() {
  return {V(1), V(0)};
}

struct ThenOp {
  template <class V>
  __device__ __forceinline__ Affine<V> operator()(const Affine<V>& first,
                                                  const Affine<V>& second) const {
    return then(first, second);
  }
};

// cub prefix callback: returns the running prefix (the state carried in from
// the previous chunks, as the map {1, h}) and folds the block's aggregate
// into it. Only lane 0 of warp 0 (thread 0) holds the meaningful value.
template <class V>
struct CarryPrefix {
  V carry;
  __device__ __forceinline__ Affine<V> operator()(const Affine<V>& block_aggregate) {
    const Affine<V> in{V(1), carry};
    carry = then(in, block_aggregate).b;
    return in;
  }
};

template <class T>
__device__ __forceinline__ const T* cptr(const void* p) {
  return static_cast<const T*>(p);
}
template <class T>
__device__ __forceinline__ T* mptr(void* p) {
  return static_cast<T*>(p);
}

template <class V>
__device__ __forceinline__ V warp_sum(V v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Host side of a launch: one block of `threads` per (batch, channel), B * D in
// the grid's x dimension, the dynamic shared-memory limit raised when the
// block needs more than the default 48 KiB. Returns the attribute call's error.
template <class Kernel, class Params>
cudaError_t launch_per_channel(Kernel* kernel, int threads, int64_t static_smem,
                               int64_t dynamic_smem, const Params& p, const CudaScanExtra& ex,
                               cudaStream_t stream) {
  if (static_smem + dynamic_smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dynamic_smem));
    if (err != cudaSuccess) return err;
  }
  ITNET_LAUNCH(static_cast<unsigned>(p.B * p.D), threads, static_cast<size_t>(dynamic_smem),
               stream, kernel)(p, ex);
  return cudaSuccess;
}

// f(std::integral_constant<CudaDecayMode, mode>{}): the run-time decay mode as a
// template argument of the kernel.
template <class F>
cudaError_t with_decay_mode(CudaDecayMode mode, F&& f) {
  using M = CudaDecayMode;
  switch (mode) {
    case M::Factored: return f(std::integral_constant<M, M::Factored>{});
    case M::PerStep: return f(std::integral_constant<M, M::PerStep>{});
    case M::PerState: return f(std::integral_constant<M, M::PerState>{});
    case M::Full: return f(std::integral_constant<M, M::Full>{});
  }
  return cudaErrorInvalidValue;
}

// The host side of a pass (forward or backward), written once for both.
// Pass describes the pass:
//   Params                              ScanParams / ScanBwdParams
//   Traits<T, kThreads, kItems>         kStaticSmem, dynamic_smem(Rk)
//   kernel<T, kThreads, kItems, kMode>()  the kernel's address
//   config(T)                           the geometry for T (cuda_kernel.h)
//   kLongItems                          steps per thread of the 128-thread
//                                       geometry (the one for long sequences)
// Each geometry config() can pick is a kernel instantiation of its own.
template <class Pass, class T, int kThreads, int kItems>
cudaError_t launch_mode(const typename Pass::Params& p, const CudaScanExtra& ex,
                        cudaStream_t stream) {
  using Tr = typename Pass::template Traits<T, kThreads, kItems>;
  return with_decay_mode(ex.mode, [&](auto mode) {
    auto* kernel = Pass::template kernel<T, kThreads, kItems, decltype(mode)::value>();
    return launch_per_channel(kernel, kThreads, Tr::kStaticSmem, Tr::dynamic_smem(p.Rk), p, ex,
                              stream);
  });
}

template <class Pass, class T>
cudaError_t dispatch(const typename Pass::Params& p, const CudaScanExtra& ex,
                     cudaStream_t stream) {
  constexpr int kLong = Pass::kLongItems;
  const CudaScanConfig cfg = Pass::config(p.T);
  if (cfg.threads == 32 && cfg.items == 4) return launch_mode<Pass, T, 32, 4>(p, ex, stream);
  if (cfg.threads == 64 && cfg.items == 8) return launch_mode<Pass, T, 64, 8>(p, ex, stream);
  if (cfg.threads == 128 && cfg.items == kLong)
    return launch_mode<Pass, T, 128, kLong>(p, ex, stream);
  return cudaErrorInvalidConfiguration;
}

template <class Pass, class T, int kThreads, int kItems>
int64_t smem_of(int64_t Rk) {
  using Tr = typename Pass::template Traits<T, kThreads, kItems>;
  return Tr::kStaticSmem + Tr::dynamic_smem(Rk);
}

template <class Pass, class T>
int64_t smem_bytes(int64_t T_, int64_t Rk) {
  const CudaScanConfig cfg = Pass::config(T_);
  if (cfg.threads == 32) return smem_of<Pass, T, 32, 4>(Rk);
  if (cfg.threads == 64) return smem_of<Pass, T, 64, 8>(Rk);
  return smem_of<Pass, T, 128, Pass::kLongItems>(Rk);
}

// cuda_scan_fwd_smem / cuda_scan_bwd_smem (cuda_kernel.h).
template <class Pass>
int64_t pass_smem(int64_t T, int64_t Rk, CudaDtype dtype) {
  return dtype == CudaDtype::Double ? smem_bytes<Pass, double>(T, Rk)
                                    : smem_bytes<Pass, float>(T, Rk);
}

// cuda_scan_fwd / cuda_scan_bwd (cuda_kernel.h).
template <class Pass>
cudaError_t run_pass(const typename Pass::Params& p, const CudaScanExtra& ex, CudaDtype dtype,
                     cudaStream_t stream) {
  if (p.B * p.D <= 0 || p.B * p.D > INT_MAX || p.T <= 0 || p.Rk <= 0)
    return cudaErrorInvalidValue;
  switch (dtype) {
    case CudaDtype::Float: return dispatch<Pass, float>(p, ex, stream);
    case CudaDtype::Double: return dispatch<Pass, double>(p, ex, stream);
    case CudaDtype::Half: return dispatch<Pass, __half>(p, ex, stream);
    case CudaDtype::BFloat16: return dispatch<Pass, __nv_bfloat16>(p, ex, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace scan
}  // namespace itnet
