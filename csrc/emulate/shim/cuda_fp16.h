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

// Packed arithmetic (the flash kernels' packed MLP math, dense/flash/packed.cuh),
// for a 2-lane type V with scalar conversions TO_F (lane -> float) and FROM2
// (float, float -> V): each lane computed in double and rounded to 16 bits
// through float32 (correctly rounded but for rare double-rounding ties); exp
// and the reciprocal are the exactly rounded functions, not the GPU's
// approximations. Instantiated here for __half2 and in cuda_bf16.h.
#define ITNET_EMU_PACKED_OPS(V, TO_F, FROM2)                                                 \
  template <class F>                                                                          \
  inline V itnet_emu_lanes(V a, V b, V c, F f) {                                              \
    return FROM2(static_cast<float>(f(TO_F(a.x), TO_F(b.x), TO_F(c.x))),                      \
                 static_cast<float>(f(TO_F(a.y), TO_F(b.y), TO_F(c.y))));                     \
  }                                                                                           \
  inline V __hadd2(V a, V b) {                                                                \
    return itnet_emu_lanes(a, b, a, [](double x, double y, double) { return x + y; });        \
  }                                                                                           \
  inline V __hsub2(V a, V b) {                                                                \
    return itnet_emu_lanes(a, b, a, [](double x, double y, double) { return x - y; });        \
  }                                                                                           \
  inline V __hmul2(V a, V b) {                                                                \
    return itnet_emu_lanes(a, b, a, [](double x, double y, double) { return x * y; });        \
  }                                                                                           \
  inline V __hfma2(V a, V b, V c) {                                                           \
    return itnet_emu_lanes(a, b, c, [](double x, double y, double z) { return x * y + z; });  \
  }                                                                                           \
  inline V __hmax2(V a, V b) {                                                                \
    return itnet_emu_lanes(a, b, a, [](double x, double y, double) { return std::fmax(x, y); }); \
  }                                                                                           \
  inline V h2exp(V a) {                                                                       \
    return itnet_emu_lanes(a, a, a, [](double x, double, double) { return std::exp(x); });    \
  }                                                                                           \
  inline V h2rcp(V a) {                                                                       \
    return itnet_emu_lanes(a, a, a, [](double x, double, double) { return 1.0 / x; });        \
  }

inline __half2 __float2half2_rn(float f) { return __floats2half2_rn(f, f); }
ITNET_EMU_PACKED_OPS(__half2, __half2float, __floats2half2_rn)
