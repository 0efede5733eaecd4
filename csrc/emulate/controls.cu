// Control kernels of the emulated build: small kernels, most with one
// deliberate bug, that the tests (tests/test_emulate.py) run to see that each
// check of the emulator catches what it is for, and their correct twins, to
// see that it reports nothing where there is nothing. Compiled only into the
// emulated library (never for a GPU).
//
// Every kernel writes n floats to out (n = threads of one block unless noted).
#include <c10/util/Exception.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "common/cuda_launch.h"
#include "dense/flash/mma.cuh"

namespace itnet {
namespace emu {
namespace {

// Each thread publishes tid + 1 and reads its right neighbour's value.
template <bool kBarrier>
__global__ void neighbour_kernel(float* out, int n) {
  ITNET_DYNAMIC_SHARED(float, s);
  const int tid = static_cast<int>(threadIdx.x);
  s[tid] = static_cast<float>(tid + 1);
  if (kBarrier) __syncthreads();
  out[tid] = s[(tid + 1) % n];
}

// The same inside each warp, ordered by __syncwarp (or not).
template <bool kBarrier>
__global__ void warp_neighbour_kernel(float* out, int n) {
  ITNET_SHARED(float, s, [64]);
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % 32, base = tid - lane;
  s[tid] = static_cast<float>(tid + 1);
  if (kBarrier) __syncwarp();
  out[tid] = s[base + (lane + 1) % 32];
  (void)n;
}

// Two threads write the same word in one barrier interval (write-write race).
__global__ void write_write_kernel(float* out, int n) {
  ITNET_SHARED(float, s, [32]);
  const int tid = static_cast<int>(threadIdx.x);
  s[tid / 2] = static_cast<float>(tid);
  __syncthreads();
  out[tid] = s[tid / 2];
  (void)n;
}

// A static array indexed one past its end by the last thread.
__global__ void static_oob_kernel(float* out, int n) {
  ITNET_SHARED(float, s, [32]);
  const int tid = static_cast<int>(threadIdx.x);
  s[tid] = 1.0f;  // launched with 33 threads
  __syncthreads();
  out[tid] = s[tid];
  (void)n;
}

// Dynamic shared memory of n - 1 floats, written at n.
__global__ void dynamic_oob_kernel(float* out, int n) {
  ITNET_DYNAMIC_SHARED(float, s);
  const int tid = static_cast<int>(threadIdx.x);
  s[tid] = 2.0f;
  __syncthreads();
  out[tid] = s[tid];
  (void)n;
}

// A __shfl_xor_sync with the full mask that only half of the warp reaches;
// the other half waits at the block barrier.
__global__ void divergent_shuffle_kernel(float* out, int n) {
  const int tid = static_cast<int>(threadIdx.x);
  float v = static_cast<float>(tid);
  if (tid % 32 < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  __syncthreads();
  out[tid] = v;
  (void)n;
}

// The correct version: a reduction over the warp.
__global__ void warp_sum_kernel(float* out, int n) {
  const int tid = static_cast<int>(threadIdx.x);
  float v = static_cast<float>(tid);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  out[tid] = v;
  (void)n;
}

// A barrier that the threads of the second warp skip (they have exited).
__global__ void partial_barrier_kernel(float* out, int n) {
  const int tid = static_cast<int>(threadIdx.x);
  if (tid >= 32) return;
  __syncthreads();
  out[tid] = 1.0f;
  (void)n;
}

// Reads shared memory nobody wrote: the poison (NaN) comes back.
__global__ void uninitialized_kernel(float* out, int n) {
  ITNET_SHARED(float, s, [64]);
  const int tid = static_cast<int>(threadIdx.x);
  out[tid] = s[tid];
  (void)n;
}

// cp.async of 4 floats per thread, read back with or without the wait.
template <bool kWait>
__global__ void cp_async_kernel(float* out, int n) {
  ITNET_DYNAMIC_SHARED(float, s);
  const int tid = static_cast<int>(threadIdx.x);
  __align__(16) float src[4] = {1.0f * tid, 1.0f * tid + 0.25f, 1.0f * tid + 0.5f,
                                1.0f * tid + 0.75f};
  // the source must outlive the copy: global memory in a real kernel; here
  // this thread's stack, which lives until the thread exits
  dense::flash::cp_async_16(s + 4 * tid, src, true);
  dense::flash::cp_async_commit();
  if (kWait) dense::flash::cp_async_wait_all();
  for (int i = 0; i < 4; ++i) out[4 * tid + i] = s[4 * tid + i];
  if (!kWait) dense::flash::cp_async_wait_all();
  (void)n;
}

// One m16n8k16 product through ldmatrix (A row-major; B k-major with .trans):
// out = A (16 x 16) @ B (16 x 8), row-major, 128 floats; A[i][k] and B[k][j]
// small integers (exact in half).
__global__ void mma_kernel(float* out, int n) {
  ITNET_SHARED(__half, a_s, [16 * 16]);
  ITNET_SHARED(__half, b_s, [16 * 8]);
  const int lane = static_cast<int>(threadIdx.x);
  for (int e = lane; e < 256; e += 32)
    a_s[e] = __float2half_rn(static_cast<float>((e * 7) % 11 - 5));
  for (int e = lane; e < 128; e += 32)
    b_s[e] = __float2half_rn(static_cast<float>((e * 5) % 9 - 4));
  __syncwarp();
  uint32_t a[4], b[4];
  const int mi = lane / 8, r = lane % 8;
  dense::flash::ldsm_x4(a, &a_s[(r + (mi & 1) * 8) * 16 + (mi >> 1) * 8]);
  // B[k][n] k-major: matrices B[0:8][0:8], B[8:16][0:8] (twice)
  dense::flash::ldsm_x4_trans(b, &b_s[(r + (mi & 1) * 8) * 8]);
  float c[4] = {0.f, 0.f, 0.f, 0.f};
  dense::flash::mma_16816<__half>(c, a, b[0], b[1]);
  const int g = lane >> 2, t = lane & 3;
  out[g * 8 + 2 * t] = c[0];
  out[g * 8 + 2 * t + 1] = c[1];
  out[(g + 8) * 8 + 2 * t] = c[2];
  out[(g + 8) * 8 + 2 * t + 1] = c[3];
  (void)n;
}

// Uses 64 KiB of dynamic shared memory (two instances: one launched after
// cudaFuncSetAttribute, one without).
template <int kInstance>
__global__ void big_dynamic_kernel(float* out, int n) {
  ITNET_DYNAMIC_SHARED(float, s);
  const int tid = static_cast<int>(threadIdx.x);
  s[16 * 1024 - 1 - tid] = 3.0f;
  __syncthreads();
  out[tid] = s[16 * 1024 - 1 - tid];
  (void)n;
}

struct Control {
  int64_t n;  // floats of output
  std::function<void(float*)> run;
};

const std::map<std::string, Control>& controls() {
  static const std::map<std::string, Control> c = {
      {"neighbour_ok",
       {64,
        [](float* o) {
          ITNET_LAUNCH(1, 64, 64 * sizeof(float), nullptr, neighbour_kernel<true>)(o, 64);
        }}},
      {"missing_syncthreads",
       {64,
        [](float* o) {
          ITNET_LAUNCH(1, 64, 64 * sizeof(float), nullptr, neighbour_kernel<false>)(o, 64);
        }}},
      {"warp_neighbour_ok",
       {64, [](float* o) { ITNET_LAUNCH(1, 64, 0, nullptr, warp_neighbour_kernel<true>)(o, 64); }}},
      {"missing_syncwarp",
       {64,
        [](float* o) { ITNET_LAUNCH(1, 64, 0, nullptr, warp_neighbour_kernel<false>)(o, 64); }}},
      {"write_write_race",
       {64, [](float* o) { ITNET_LAUNCH(1, 64, 0, nullptr, write_write_kernel)(o, 64); }}},
      {"static_out_of_bounds",
       {33, [](float* o) { ITNET_LAUNCH(1, 33, 0, nullptr, static_oob_kernel)(o, 33); }}},
      {"dynamic_out_of_bounds",
       {32,
        [](float* o) {
          ITNET_LAUNCH(1, 32, 31 * sizeof(float), nullptr, dynamic_oob_kernel)(o, 32);
        }}},
      {"divergent_shuffle",
       {64, [](float* o) { ITNET_LAUNCH(1, 64, 0, nullptr, divergent_shuffle_kernel)(o, 64); }}},
      {"warp_sum_ok",
       {64, [](float* o) { ITNET_LAUNCH(1, 64, 0, nullptr, warp_sum_kernel)(o, 64); }}},
      {"partial_barrier",
       {64, [](float* o) { ITNET_LAUNCH(1, 64, 0, nullptr, partial_barrier_kernel)(o, 64); }}},
      {"uninitialized_shared",
       {64, [](float* o) { ITNET_LAUNCH(1, 64, 0, nullptr, uninitialized_kernel)(o, 64); }}},
      {"cp_async_ok",
       {128,
        [](float* o) {
          ITNET_LAUNCH(1, 32, 128 * sizeof(float), nullptr, cp_async_kernel<true>)(o, 128);
        }}},
      {"missing_cp_async_wait",
       {128,
        [](float* o) {
          ITNET_LAUNCH(1, 32, 128 * sizeof(float), nullptr, cp_async_kernel<false>)(o, 128);
        }}},
      {"mma_m16n8k16",
       {128, [](float* o) { ITNET_LAUNCH(1, 32, 0, nullptr, mma_kernel)(o, 128); }}},
      {"too_many_threads",
       {1, [](float* o) { ITNET_LAUNCH(1, 2048, 0, nullptr, warp_sum_kernel)(o, 1); }}},
      {"big_dynamic_without_attribute",
       {32,
        [](float* o) { ITNET_LAUNCH(1, 32, 64 * 1024, nullptr, big_dynamic_kernel<0>)(o, 32); }}},
      {"big_dynamic_ok",
       {32,
        [](float* o) {
          TORCH_CHECK(cudaFuncSetAttribute(big_dynamic_kernel<1>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           64 * 1024) == cudaSuccess);
          ITNET_LAUNCH(1, 32, 64 * 1024, nullptr, big_dynamic_kernel<1>)(o, 32);
        }}},
  };
  return c;
}

}  // namespace

at::Tensor run_control(const std::string& name, int64_t n) {
  const auto& c = controls();
  auto it = c.find(name);
  TORCH_CHECK(it != c.end(), "name: no control kernel \"", name, "\"");
  at::Tensor out = at::zeros({std::max<int64_t>(n, it->second.n)}, at::kFloat);
  it->second.run(out.data_ptr<float>());
  return out.narrow(0, 0, it->second.n);
}

std::vector<std::string> control_names() {
  std::vector<std::string> names;
  for (const auto& kv : controls()) names.push_back(kv.first);
  return names;
}

}  // namespace emu
}  // namespace itnet
