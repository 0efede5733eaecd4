// Emulated build: a stand-in for cub::BlockScan with the interface the scan
// kernels use and cub's contract (every thread of the block calls it; the
// prefix callback is invoked by the first warp, lane 0's value is the prefix;
// the temp storage may be reused only after a barrier). Sequential inside, so
// its rounding is not cub's: only a GPU checks the real cub.
#pragma once

#include "emulate/device.h"

namespace cub {

enum BlockScanAlgorithm { BLOCK_SCAN_RAKING, BLOCK_SCAN_RAKING_MEMOIZE, BLOCK_SCAN_WARP_SCANS };

template <class T, int BLOCK_DIM_X, BlockScanAlgorithm ALGORITHM = BLOCK_SCAN_RAKING,
          int BLOCK_DIM_Y = 1, int BLOCK_DIM_Z = 1>
class BlockScan {
  static constexpr int kThreads = BLOCK_DIM_X * BLOCK_DIM_Y * BLOCK_DIM_Z;

 public:
  // items [0, kThreads): the inputs, then (thread 0) the exclusive prefixes;
  // [kThreads]: the block aggregate; [kThreads + 1]: the callback's prefix
  struct TempStorage {
    alignas(T) unsigned char bytes[sizeof(T) * (kThreads + 2)];
  };

  __device__ explicit BlockScan(TempStorage& storage)
      : items_(reinterpret_cast<T*>(storage.bytes)) {}

  // output = prefix op x_0 op ... op x_{tid - 1} (prefix for thread 0), where
  // prefix = prefix_op(x_0 op ... op x_{n-1}) as lane 0 of warp 0 returns it.
  template <class ScanOp, class PrefixOp>
  __device__ void ExclusiveScan(T input, T& output, ScanOp op, PrefixOp& prefix_op) {
    const int tid =
        static_cast<int>(threadIdx.x + BLOCK_DIM_X * (threadIdx.y + BLOCK_DIM_Y * threadIdx.z));
    items_[tid] = input;
    __syncthreads();
    if (tid == 0) {
      T run = items_[0];
      for (int i = 1; i < kThreads; ++i) {
        const T x = items_[i];
        items_[i] = run;  // exclusive: x_0 op ... op x_{i-1}
        run = op(run, x);
      }
      items_[kThreads] = run;
    }
    __syncthreads();
    if (tid < 32) {
      const T prefix = prefix_op(items_[kThreads]);
      if (tid == 0) items_[kThreads + 1] = prefix;
    }
    __syncthreads();
    const T prefix = items_[kThreads + 1];
    output = tid == 0 ? prefix : op(prefix, items_[tid]);
  }

  // output = x_0 op ... op x_tid
  template <class ScanOp>
  __device__ void InclusiveScan(T input, T& output, ScanOp op) {
    const int tid =
        static_cast<int>(threadIdx.x + BLOCK_DIM_X * (threadIdx.y + BLOCK_DIM_Y * threadIdx.z));
    items_[tid] = input;
    __syncthreads();
    if (tid == 0)
      for (int i = 1; i < kThreads; ++i) items_[i] = op(items_[i - 1], items_[i]);
    __syncthreads();
    output = items_[tid];
  }

 private:
  T* items_;
};

}  // namespace cub
