// Emulated build: the 16-bit float type of cuda_fp16.h and the conversions the
// kernels use, rounding to nearest even as the GPU's _rn conversions do
// (c10's conversions, which torch's own .half() uses).
#pragma once

#include <c10/util/Half.h>

#include <cmath>
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

// Packed arithmetic (the flash kernels' packed MLP math, dense/flash/packed.cuh):
// each lane computed in double and rounded to half through float32 (correctly
// rounded but for rare double-rounding ties); exp and the reciprocal are the
// exactly rounded functions, not the GPU's approximations.
namespace itnet_emu_fp16 {
template <class F>
inline __half2 lanes(__half2 a, __half2 b, __half2 c, F f) {
  return __floats2half2_rn(
      static_cast<float>(f(__half2float(a.x), __half2float(b.x), __half2float(c.x))),
      static_cast<float>(f(__half2float(a.y), __half2float(b.y), __half2float(c.y))));
}
}  // namespace itnet_emu_fp16
inline __half2 __float2half2_rn(float f) { return __floats2half2_rn(f, f); }
inline __half2 __hadd2(__half2 a, __half2 b) {
  return itnet_emu_fp16::lanes(a, b, a, [](double x, double y, double) { return x + y; });
}
inline __half2 __hsub2(__half2 a, __half2 b) {
  return itnet_emu_fp16::lanes(a, b, a, [](double x, double y, double) { return x - y; });
}
inline __half2 __hmul2(__half2 a, __half2 b) {
  return itnet_emu_fp16::lanes(a, b, a, [](double x, double y, double) { return x * y; });
}
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
  return itnet_emu_fp16::lanes(a, b, c, [](double x, double y, double z) { return x * y + z; });
}
inline __half2 __hmax2(__half2 a, __half2 b) {
  return itnet_emu_fp16::lanes(a, b, a, [](double x, double y, double) { return std::fmax(x, y); });
}
inline __half2 h2exp(__half2 a) {
  return itnet_emu_fp16::lanes(a, a, a, [](double x, double, double) { return std::exp(x); });
}
inline __half2 h2rcp(__half2 a) {
  return itnet_emu_fp16::lanes(a, a, a, [](double x, double, double) { return 1.0 / x; });
}
