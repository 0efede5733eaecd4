// Interface between the ATen-level CPU entry points (cpu.cpp) and the
// vectorized kernels (cpu_fwd.cpp / cpu_bwd.cpp, compiled once per CPU
// capability).
//
// The work is split into items: (batch, head group, tile). A head group is a
// single head when the op has no MLP term, and all heads when it has one (the
// pair MLP's hidden layer is shared by the heads, so it is evaluated once per
// pair and projected to every head). Forward tiles are query tiles; backward
// tiles are key tiles, so that key-side gradients are owned by one item and
// need no synchronisation.
#pragma once

#include <cstdint>

#include "dense/params.h"

namespace itnet {
namespace dense {

constexpr int64_t kCpuBlockQ = 64;
constexpr int64_t kCpuBlockK = 64;

inline int64_t cpu_head_groups(const FwdParams& p) { return p.mlp ? 1 : p.H; }
inline int64_t cpu_fwd_items(const FwdParams& p) {
  return p.B * cpu_head_groups(p) * ((p.N + kCpuBlockQ - 1) / kCpuBlockQ);
}
inline int64_t cpu_bwd_items(const FwdParams& p) {
  return p.B * cpu_head_groups(p) * ((p.M + kCpuBlockK - 1) / kCpuBlockK);
}

// Runs items [begin, end). `tid` selects the per-thread gradient buffers.
using FwdRangeFn = void (*)(const FwdParams&, int64_t begin, int64_t end);
using BwdRangeFn = void (*)(const BwdParams&, int64_t begin, int64_t end, int64_t tid);

struct CpuKernelTable {
  FwdRangeFn fwd_f32;
  FwdRangeFn fwd_f64;
  BwdRangeFn bwd_f32;
  BwdRangeFn bwd_f64;
};

// Defined in cpu_fwd.cpp / cpu_bwd.cpp, once per capability namespace.
#define ITNET_DECLARE_CPU_KERNELS(CAP)                                            \
  namespace CAP {                                                                 \
  void fwd_f32(const FwdParams&, int64_t, int64_t);                               \
  void fwd_f64(const FwdParams&, int64_t, int64_t);                               \
  void bwd_f32(const BwdParams&, int64_t, int64_t, int64_t);                      \
  void bwd_f64(const BwdParams&, int64_t, int64_t, int64_t);                      \
  inline CpuKernelTable kernel_table() { return {&fwd_f32, &fwd_f64, &bwd_f32, &bwd_f64}; } \
  }
ITNET_DECLARE_CPU_KERNELS(DEFAULT)
#if defined(__x86_64__) || defined(_M_X64)
ITNET_DECLARE_CPU_KERNELS(AVX2)
ITNET_DECLARE_CPU_KERNELS(AVX512)
#endif
#undef ITNET_DECLARE_CPU_KERNELS

}  // namespace dense
}  // namespace itnet
