// Interface between the CPU entry points of the low-rank op (lowrank/cpu.cpp)
// and its vectorized kernels (lowrank/cpu_kernel.cpp, compiled once per CPU
// capability).
//
// Work is split per (b, h) slice into row ranges; the entry point runs the
// ranges in parallel and merges the per-range partial sums in a fixed order
// (deterministic for a given thread count):
//   forward:  keys    -> partial (S, z, m) per key range   [merge: S, z, c]
//             queries -> out rows
//   backward: keys    -> the same partial (S, z, m)          [merge]
//             queries -> dq rows, partial (dS, dz) per query range [merge]
//             keys    -> dk, dv rows
// S is (F, Dv) and z (F) per slice; m is the range's running max of the key
// exponents (FAVOR+ in softmax mode, see feature.h), else 0. Buffers are in
// the compute dtype T (float32 for float16 / bfloat16 / float32 inputs, which
// the entry converts, float64 for float64).
#pragma once

#include <cstdint>

#include "lowrank/params.h"

namespace itnet {
namespace lowrank {

template <class T>
struct CpuKernels {
  // partial sums over keys [j0, j1) of slice bh (S, z zero-filled by the caller)
  void (*keys)(const LowRankParams&, int64_t bh, int64_t j0, int64_t j1, T* S, T* z, T* m);
  // out rows [i0, i1) of slice bh from the merged S, z
  void (*queries)(const LowRankParams&, int64_t bh, int64_t i0, int64_t i1, const T* S,
                  const T* z);
  // dq rows [i0, i1); adds this range's dS, dz (zero-filled by the caller)
  void (*queries_bwd)(const LowRankBwdParams&, int64_t bh, int64_t i0, int64_t i1, const T* S,
                      const T* z, T* dS, T* dz);
  // dk, dv rows [j0, j1) from the merged dS, dz; c: the slice's key stabilizer
  void (*keys_bwd)(const LowRankBwdParams&, int64_t bh, int64_t j0, int64_t j1, T c,
                   const T* dS, const T* dz);
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
