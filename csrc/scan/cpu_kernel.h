// Interface between the CPU entry points of the decay scan (scan/cpu.cpp) and
// its vectorized kernels (scan/cpu_kernel.cpp, compiled once per CPU
// capability).
//
// Work items are (batch, group, channel block): the channels of one block
// belong to one group of phi / psi, and block k of a group writes part k of
// the dphi / dpsi partial sums, so no two items write the same element.
// Inside an item the kernels walk time once per sub-block of kCpuSubBlock
// channels, vectorized over channels (lanes = d, see cpu_kernel.cpp).
#pragma once

#include <algorithm>
#include <cstdint>

#include "scan/params.h"

namespace itnet {
namespace scan {

// Channels whose states one pass over time keeps in cache (at most: the
// backward takes fewer when a chunk of their states would not fit in L2, see
// bwd_item in cpu_kernel.cpp).
constexpr int64_t kCpuSubBlock = 128;

struct CpuWork {
  int64_t blocks_per_group = 1;  // = n_parts of the backward's dphi / dpsi
  int64_t block = 1;             // channels per block (the last one may be short)
  int64_t items(const ScanParams& p) const { return p.B * p.G * blocks_per_group; }
};

// Enough items for `threads` threads (about 4 per thread for balance), but
// blocks of at least 8 channels: every block adds a (B, T, G, Rk) partial
// sum to the backward.
inline CpuWork cpu_work(const ScanParams& p, int64_t threads) {
  CpuWork w;
  const int64_t per_group = p.group_size;
  const int64_t items = std::max<int64_t>(1, p.B * p.G);  // without channel blocks
  const int64_t want = std::max<int64_t>(1, (4 * threads + items - 1) / items);
  const int64_t most = std::max<int64_t>(1, per_group / 8);
  w.block = std::max<int64_t>(1, (per_group + std::min(want, most) - 1) / std::min(want, most));
  w.blocks_per_group = std::max<int64_t>(1, (per_group + w.block - 1) / w.block);
  return w;
}

using FwdFn = void (*)(const ScanParams&, const CpuWork&, int64_t begin, int64_t end);
using BwdFn = void (*)(const ScanBwdParams&, const CpuWork&, int64_t begin, int64_t end);

struct CpuKernelTable {
  FwdFn fwd_f32, fwd_f64;
  BwdFn bwd_f32, bwd_f64;
};

#define ITNET_DECLARE_SCAN_KERNELS(CAP)                                                    \
  namespace CAP {                                                                          \
  void fwd_f32(const ScanParams&, const CpuWork&, int64_t, int64_t);                       \
  void fwd_f64(const ScanParams&, const CpuWork&, int64_t, int64_t);                       \
  void bwd_f32(const ScanBwdParams&, const CpuWork&, int64_t, int64_t);                    \
  void bwd_f64(const ScanBwdParams&, const CpuWork&, int64_t, int64_t);                    \
  inline CpuKernelTable kernel_table() { return {&fwd_f32, &fwd_f64, &bwd_f32, &bwd_f64}; } \
  }
ITNET_DECLARE_SCAN_KERNELS(DEFAULT)
#if defined(__x86_64__) || defined(_M_X64)
ITNET_DECLARE_SCAN_KERNELS(AVX2)
ITNET_DECLARE_SCAN_KERNELS(AVX512)
#endif
#undef ITNET_DECLARE_SCAN_KERNELS

}  // namespace scan
}  // namespace itnet
