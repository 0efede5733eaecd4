// The pair-MLP term of the forward in packed 16-bit math (the kPacked flash
// configurations, config.h): u, t, the offset table and W2 are staged in
// shared memory as half2 / bfloat162 pairs of hidden units, and per pair
// (i, j) the pre-activation u + (t + E), the activation and the W2 products
// run on two hidden units per instruction. Sums of 4 hidden units are then
// added to the float32 logit, so the rounding error per pair is that of a few
// 16-bit operations per 4 hidden units, not of a 16-bit running sum over R.
// The activation is common/activation.h's formula, instantiated on Pk<T>.
//
// The shared-memory layout is the float32 one (config.h Smem): row r of a
// tile starts at float r * ld and holds R4 / 2 packed pairs.
#pragma once

#include <cstdint>

#include "common/activation.h"
#include "dense/flash/logits.cuh"
#include "dense/flash/tile.cuh"

namespace itnet {
namespace dense {
namespace flash {

// The 2-lane type of a 16-bit element type and its conversions.
template <class T>
struct Packed;

template <>
struct Packed<__half> {
  using V = __half2;
  static __device__ __forceinline__ V splat(float x) { return __float2half2_rn(x); }
  static __device__ __forceinline__ float2 to_float2(V x) { return __half22float2(x); }
};

template <>
struct Packed<__nv_bfloat16> {
  using V = __nv_bfloat162;
  static __device__ __forceinline__ V splat(float x) { return __float2bfloat162_rn(x); }
  static __device__ __forceinline__ float2 to_float2(V x) { return __bfloat1622float2(x); }
};

// Two hidden units in one 32-bit register, with the arithmetic Act<> needs.
template <class T>
struct Pk {
  using V = typename Packed<T>::V;
  V v;
  Pk() = default;
  __device__ __forceinline__ explicit Pk(V x) : v(x) {}
  // constants of the activation formulas, in both lanes
  __device__ __forceinline__ Pk(double c) : v(Packed<T>::splat(static_cast<float>(c))) {}
  friend __device__ __forceinline__ Pk operator+(Pk a, Pk b) { return Pk(__hadd2(a.v, b.v)); }
  friend __device__ __forceinline__ Pk operator-(Pk a, Pk b) { return Pk(__hsub2(a.v, b.v)); }
  friend __device__ __forceinline__ Pk operator*(Pk a, Pk b) { return Pk(__hmul2(a.v, b.v)); }
  // a * (1 / b), the reciprocal approximate (MUFU.RCP), as __expf is in float
  friend __device__ __forceinline__ Pk operator/(Pk a, Pk b) { return Pk(__hmul2(a.v, h2rcp(b.v))); }
  // a * b + c rounded once
  friend __device__ __forceinline__ Pk fma(Pk a, Pk b, Pk c) { return Pk(__hfma2(a.v, b.v, c.v)); }
};

}  // namespace flash
}  // namespace dense

template <class T>
struct Ops<dense::flash::Pk<T>> {
  using P = dense::flash::Pk<T>;
  static __device__ __forceinline__ P exp(P x) { return P(h2exp(x.v)); }
  static __device__ __forceinline__ P relu(P x) {
    return P(__hmax2(x.v, dense::flash::Packed<T>::splat(0.f)));
  }
};

namespace dense {
namespace flash {

// load_rows_f32 into packed pairs: row r's pairs (g[2c], g[2c + 1]) at
// s[r * ld + c], zero past R and rows_valid (the padding adds W2 0 * act(0)).
template <class T>
__device__ __forceinline__ void load_rows_packed(float* s, const float* g, int rows,
                                                 int64_t rows_valid, int R, int ld, int tid,
                                                 int nthreads) {
  uint32_t* d = reinterpret_cast<uint32_t*>(s);
  const int pairs = ld / 2;
  for (int c = tid; c < rows * pairs; c += nthreads) {
    const int r = c / pairs, k = 2 * (c % pairs);
    const bool row_ok = r < rows_valid && g != nullptr;
    const float* gr = g + static_cast<int64_t>(r) * R;
    const float lo = row_ok && k < R ? gr[k] : 0.f;
    const float hi = row_ok && k + 1 < R ? gr[k + 1] : 0.f;
    d[r * ld + c % pairs] = Elem<T>::pack(lo, hi);
  }
}

// stage_mlp_params in packed pairs.
template <class T>
__device__ __forceinline__ void stage_mlp_params_packed(const FwdParams& p, int64_t h, float* w2_s,
                                                        float* e_s, int ld, int R4, int tid,
                                                        int nthreads) {
  const int R = static_cast<int>(p.R);
  load_rows_packed<T>(w2_s, static_cast<const float*>(p.W2) + h * R, 1, 1, R, R4, tid, nthreads);
  if (e_s != nullptr)
    load_rows_packed<T>(e_s, static_cast<const float*>(p.E), static_cast<int>(p.O), p.O, R, ld,
                        tid, nthreads);
}

// add_mlp_impl (logits.cuh) of the forward (rows = queries) on packed pairs:
// s += b2[h] + sum over 4-unit groups of float(W2 act(u + (t + E))) summed
// in 16 bit within the group.
template <class T, Activation A, int kNT, bool kWindow>
__device__ __forceinline__ void add_mlp_packed_impl(float (&s)[kNT][4], const int (&code)[kNT][4],
                                                    const FwdParams& p, const FragPos& f,
                                                    const float* u_s, const float* t_s,
                                                    const float* e_s, const float* w2_s, int ld,
                                                    int R4, int lane) {
  using P = Pk<T>;
  const float b2 = p.b2 ? static_cast<const float*>(p.b2)[f.h] : 0.f;
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[nt][e] += b2;
  const int rl0 = f.row0 + (lane >> 2);
  // 4 hidden units = two pairs = 8 bytes per row and step
  auto pairs = [](const float* row, int rc) {
    return *reinterpret_cast<const uint2*>(row + rc / 2);
  };
  auto as_pk = [](uint32_t x) { return *reinterpret_cast<const P*>(&x); };
  for (int rc = 0; rc < R4; rc += 4) {
    const uint2 w = pairs(w2_s, rc);
    const uint2 ra = pairs(u_s + rl0 * ld, rc), rb = pairs(u_s + (rl0 + 8) * ld, rc);
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int cl = nt * 8 + acc_col(lane, c);
        const uint2 cv = pairs(t_s + cl * ld, rc);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int e = c + 2 * half;
          if (kWindow && code[nt][e] < 0) continue;
          const uint2 rv = half ? rb : ra;
          P t0 = as_pk(cv.x), t1 = as_pk(cv.y);
          if (e_s != nullptr) {
            const uint2 ev = pairs(e_s + code[nt][e] * ld, rc);
            t0 = t0 + as_pk(ev.x);
            t1 = t1 + as_pk(ev.y);
          }
          // pair_preact's operand order: u + (t + E)
          const P a0 = Act<A, P>::fwd(as_pk(rv.x) + t0);
          const P a1 = Act<A, P>::fwd(as_pk(rv.y) + t1);
          const float2 g = Packed<T>::to_float2(fma(as_pk(w.y), a1, as_pk(w.x) * a0).v);
          s[nt][e] += g.x + g.y;
        }
      }
  }
}

template <class T, Activation A, int kNT>
__device__ __forceinline__ void add_mlp_packed(float (&s)[kNT][4], const int (&code)[kNT][4],
                                               const FwdParams& p, const FragPos& f,
                                               const float* u_s, const float* t_s,
                                               const float* e_s, const float* w2_s, int ld, int R4,
                                               int lane) {
  if (p.window.dims > 0)
    add_mlp_packed_impl<T, A, kNT, true>(s, code, p, f, u_s, t_s, e_s, w2_s, ld, R4, lane);
  else
    add_mlp_packed_impl<T, A, kNT, false>(s, code, p, f, u_s, t_s, e_s, w2_s, ld, R4, lane);
}

}  // namespace flash
}  // namespace dense
}  // namespace itnet
