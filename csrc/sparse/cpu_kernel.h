// Interface between the CPU entry points of the sparse op (sparse/cpu.cpp)
// and its vectorized kernels (sparse/cpu_kernel.cpp, compiled once per CPU
// capability).
//
// Work items are query rows (b, i), forward and backward alike: a row walks
// its pair list in chunks of up to kCpuPairChunk present pairs, gathers their
// key-side rows and evaluates the pair MLP vectorized over the pairs of the
// chunk (common/cpu_pair_tile.h's register blocks), or, with the MLP term and
// many heads, as one GEMM over the chunk's pairs (sparse/cpu_pair_major.h).
// The backward writes query-side
// gradients (dq, du, dlog_w) directly, since a row owns them, and scatters
// key-side and parameter gradients into the calling thread's own buffers,
// which the entry point sums: no races, and deterministic for a given number
// of threads.
#pragma once

#include <cstdint>

#include "sparse/params.h"

namespace itnet {
namespace sparse {

constexpr int64_t kCpuPairChunk = 64;

using FwdFn = void (*)(const SparseParams&, int64_t begin, int64_t end);
using BwdFn = void (*)(const SparseBwdParams&, int64_t begin, int64_t end, int64_t tid);

struct CpuKernelTable {
  FwdFn fwd_f32, fwd_f64;
  BwdFn bwd_f32, bwd_f64;
};

#define ITNET_DECLARE_SPARSE_KERNELS(CAP)                                                   \
  namespace CAP {                                                                           \
  void fwd_f32(const SparseParams&, int64_t, int64_t);                                      \
  void fwd_f64(const SparseParams&, int64_t, int64_t);                                      \
  void bwd_f32(const SparseBwdParams&, int64_t, int64_t, int64_t);                          \
  void bwd_f64(const SparseBwdParams&, int64_t, int64_t, int64_t);                          \
  inline CpuKernelTable kernel_table() { return {&fwd_f32, &fwd_f64, &bwd_f32, &bwd_f64}; } \
  }
ITNET_DECLARE_SPARSE_KERNELS(DEFAULT)
#if defined(__x86_64__) || defined(_M_X64)
ITNET_DECLARE_SPARSE_KERNELS(AVX2)
ITNET_DECLARE_SPARSE_KERNELS(AVX512)
#endif
#undef ITNET_DECLARE_SPARSE_KERNELS

}  // namespace sparse
}  // namespace itnet
