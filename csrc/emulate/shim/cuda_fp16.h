// Emulated build: the 16-bit float type of cuda_fp16.h and the conversions the
// kernels use, rounding to nearest even as the GPU's _rn conversions do
// (c10's conversions, which torch's own .half() uses).
#pragma once

#include <c10/util/Half.h>

#include <cstdint>

#include "vector_types.h"

struct __half {
  uint16_t __x;
};
struct __half2 {
  __half x, y;  // x in the low 16 bits
};
static_assert(sizeof(__half2) == 4, "__half2 is one 32-bit register");

inline float __half2float(__half h) { return c10::detail::fp16_ieee_to_fp32_value(h.__x); }
inline __half __float2half_rn(float f) { return __half{c10::detail::fp16_ieee_from_fp32_value(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline __half2 __floats2half2_rn(float lo, float hi) {
  return __half2{__float2half_rn(lo), __float2half_rn(hi)};
}
inline __half2 __float22half2_rn(float2 f) { return __floats2half2_rn(f.x, f.y); }
inline float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }
