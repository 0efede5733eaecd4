// Tensor-core and memory primitives of the flash kernels (sm_80+): the
// m16n8k16 MMA for fp16 / bf16 with fp32 accumulation, ldmatrix, cp.async,
// and the packing of fp32 pairs into one 32-bit register of two 16-bit
// elements. Thin inline-PTX wrappers only; the fragment layouts they imply
// are written down in tile.cuh, where they are used.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#if defined(ITNET_EMULATE)
#include "emulate/tensor_core.h"
#endif

// Whether a flash kernel body is compiled: the device passes for sm_80+ (the
// host pass and older architectures see empty kernels, never launched there),
// and the emulated build, where the PTX wrappers below have host bodies.
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800) || defined(ITNET_EMULATE)
#define ITNET_FLASH_ARCH_OK 1
#else
#define ITNET_FLASH_ARCH_OK 0
#endif

namespace itnet {
namespace dense {
namespace flash {

// The 16-bit element types and what the kernels need of them.
template <class T>
struct Elem;

template <>
struct Elem<__half> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);  // lo in the low 16 bits
    return *reinterpret_cast<const uint32_t*>(&h);
  }
  static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
};

template <>
struct Elem<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
  static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
};

// c += a * b for one 16x8x16 tile: a 16x16 (row major, 4 registers), b 16x8
// (column major, 2 registers), c 16x8 fp32 (4 registers per thread).
template <class T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&c)[4], const uint32_t (&a)[4],
                                                  uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#elif defined(ITNET_EMULATE)
  ::itnet::emu::mma_m16n8k16(c, a, b0, b1, /*bf16=*/false);
#endif
}

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4],
                                                         uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#elif defined(ITNET_EMULATE)
  ::itnet::emu::mma_m16n8k16(c, a, b0, b1, /*bf16=*/true);
#endif
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 matrices of 16-bit elements from shared memory: lane l gives the
// address of row (l % 8) of matrix l / 8; register m of every lane receives
// its part of matrix m (row lane / 4, columns 2 (lane % 4) and + 1), or of the
// transposed matrix with .trans.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row))
               : "memory");
#elif defined(ITNET_EMULATE)
  ::itnet::emu::ldmatrix_x4(r, row, /*trans=*/false);
#endif
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row))
               : "memory");
#elif defined(ITNET_EMULATE)
  ::itnet::emu::ldmatrix_x4(r, row, /*trans=*/true);
#endif
}

// 16-byte asynchronous copy global -> shared; valid = false writes zeros and
// reads nothing (src-size 0).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(n)
               : "memory");
#elif defined(ITNET_EMULATE)
  ::itnet::emu::cp_async_checked(dst, src, 16, valid);
#endif
}

// 4-byte asynchronous copy (float32 side operands of any row length).
__device__ __forceinline__ void cp_async_4(void* dst, const void* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const int n = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(n)
               : "memory");
#elif defined(ITNET_EMULATE)
  ::itnet::emu::cp_async_checked(dst, src, 4, valid);
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif defined(ITNET_EMULATE)
  ::itnet::emu::cp_async_commit();
#endif
}

__device__ __forceinline__ void cp_async_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
#elif defined(ITNET_EMULATE)
  ::itnet::emu::cp_async_wait_all();
#endif
}

}  // namespace flash
}  // namespace dense
}  // namespace itnet
