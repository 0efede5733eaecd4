// Interface between the CPU entry points of the low-rank op (lowrank/cpu.cpp)
// and its vectorized kernels (lowrank/cpu_kernel.cpp, compiled once per CPU
// capability).
//
// Work is split per (b, h) slice into row ranges; the entry point runs the
// ranges in parallel and merges the per-range partial sums in a fixed order
// (deterministic for a given thread count):
//   forward:  keys    -> partial (Sx, m) per key range      [merge: Sx, c]
//             queries -> out rows
//   backward: keys    -> the same partial (Sx, m)            [merge]
//             queries -> dq rows, partial dSx per query range [merge]
//             keys    -> dk, dv rows
// Sx = [S | z] is (F, Dv + 1) per slice: the key sum of psi_j [v_j, 1]^T, so
// one matrix product gives a row's numerator and denominator together; dSx
// likewise holds [dS | dz]. m is the range's running max of the key
// exponents (FAVOR+ in softmax mode, see feature.h), else 0. The products are
// the dense kernel's register-blocked gemm on chunks of kCpuChunk rows.
// Buffers are in the compute dtype T (float32 for float16 / bfloat16 /
// float32 inputs, which the entry converts, float64 for float64).
#pragma once

#include <cstdint>

#include "lowrank/params.h"

namespace itnet {
namespace lowrank {

constexpr int64_t kCpuChunk = 64;  // rows featurized and contracted at a time

template <class T>
struct CpuKernels {
  // adds keys [j0, j1) of slice bh to Sx (F, Dv + 1), zero-filled by the caller;
  // *m: the running max the sums are relative to
  void (*keys)(const LowRankParams&, int64_t bh, int64_t j0, int64_t j1, T* Sx, T* m);
  // out rows [i0, i1) of slice bh from the merged Sx
  void (*queries)(const LowRankParams&, int64_t bh, int64_t i0, int64_t i1, const T* Sx);
  // dq rows [i0, i1); adds this range's dSx (zero-filled by the caller).
  // Sxt: Sx transposed, (Dv + 1, F)
  void (*queries_bwd)(const LowRankBwdParams&, int64_t bh, int64_t i0, int64_t i1, const T* Sx,
                      const T* Sxt, T* dSx);
  // dk, dv rows [j0, j1) from the merged dSx and its transpose dSxt (Dv + 1, F);
  // c: the slice's key stabilizer
  void (*keys_bwd)(const LowRankBwdParams&, int64_t bh, int64_t j0, int64_t j1, T c,
                   const T* dSx, const T* dSxt);
  // features op: rows [r0, r1) of slice s; c: the slice's stabilizer (Slice mode)
  void (*features)(const FeatureParams&, int64_t s, int64_t r0, int64_t r1, T c);
  void (*features_bwd)(const FeatureParams&, int64_t s, int64_t r0, int64_t r1, T c);
  // Slice mode: max over rows [r0, r1) of slice s and every feature of the exponents
  T (*exponent_max)(const FeatureParams&, int64_t s, int64_t r0, int64_t r1);
};

struct CpuKernelTable {
  CpuKernels<float> f32;
  CpuKernels<double> f64;
};

#define ITNET_DECLARE_LOWRANK_KERNELS(CAP) \
  namespace CAP {                          \
  CpuKernelTable kernel_table();           \
  }
ITNET_DECLARE_LOWRANK_KERNELS(DEFAULT)
#if defined(__x86_64__) || defined(_M_X64)
ITNET_DECLARE_LOWRANK_KERNELS(AVX2)
ITNET_DECLARE_LOWRANK_KERNELS(AVX512)
#endif
#undef ITNET_DECLARE_LOWRANK_KERNELS

}  // namespace lowrank
}  // namespace itnet
