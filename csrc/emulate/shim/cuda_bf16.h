// Emulated build: the bfloat16 type of cuda_bf16.h and its conversions
// (round to nearest even, c10's, as torch's .bfloat16() and the GPU's _rn).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>

#include "cuda_fp16.h"

struct __nv_bfloat16 {
  uint16_t __x;
};
struct __nv_bfloat162 {
  __nv_bfloat16 x, y;  // x in the low 16 bits
};
static_assert(sizeof(__nv_bfloat162) == 4, "__nv_bfloat162 is one 32-bit register");

inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t bits = static_cast<uint32_t>(h.__x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  return __nv_bfloat16{c10::detail::round_to_nearest_even(f)};
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return __nv_bfloat162{__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}
inline float2 __bfloat1622float2(__nv_bfloat162 h) {
  return float2{__bfloat162float(h.x), __bfloat162float(h.y)};
}

// Packed arithmetic, as for __half2 (cuda_fp16.h).
inline __nv_bfloat162 __float2bfloat162_rn(float f) { return __floats2bfloat162_rn(f, f); }
ITNET_EMU_PACKED_OPS(__nv_bfloat162, __bfloat162float, __floats2bfloat162_rn)
