// The logit of a (query, key) pair in the flash kernels, evaluated on the
// accumulator fragments of S = Q K^T (tile.cuh): the content term comes from
// the MMA, the pair MLP, the support and the additive terms are added here,
// element by element, with the shared math of csrc/common (activations,
// causal / window predicates, offset indexing) - the same formulas as the CPU
// kernels and the simple CUDA kernels.
//
// A fragment's rows are queries and its columns keys (forward, query-side
// backward), or the other way round (kKeyRows: key-side backward).
//
// In the flash kernels u, t, W2, b2, offset_table, key_bias, key_scale and the
// attention mask are float32 (the launcher converts them); u and t rows of the
// current tiles and the offset table are staged in shared memory with row
// stride `ld` floats (R rounded up to 4, plus 4: conflict-free float4 reads).
#pragma once

#include <cstdint>

#include "common/activation.h"
#include "common/math.h"
#include "common/support.h"
#include "dense/flash/tile.cuh"
#include "dense/params.h"

namespace itnet {
namespace dense {
namespace flash {

// Where the query (i) and key (j) of fragment element (rl, cl) are.
template <bool kKeyRows>
struct Orient {
  static __device__ __forceinline__ int q(int rl, int cl) { return kKeyRows ? cl : rl; }
  static __device__ __forceinline__ int k(int rl, int cl) { return kKeyRows ? rl : cl; }
};

// Window code of the pair: -1 outside the window, else its offset-table row
// (0 without a table). Only for i < N and j < M.
__device__ __forceinline__ int window_code(const FwdParams& p, int64_t b, int64_t i, int64_t j) {
  const int D = p.window.dims;
  const double* pq = p.qpos + b * p.qpos_bstride + i * D;
  const double* pk = p.kpos + b * p.kpos_bstride + j * D;
  if (!window_allows(p.window, pq, pk)) return -1;
  return p.E ? static_cast<int>(offset_row(p.window, pq, pk)) : 0;
}

// The head's W2 row (zero padded to R4) and, when given, the offset table
// into shared memory: block-wide plain stores, a barrier must follow.
__device__ __forceinline__ void stage_mlp_params(const FwdParams& p, int64_t h, float* w2_s,
                                                 float* e_s, int ld, int R4, int tid,
                                                 int nthreads) {
  const int R = static_cast<int>(p.R);
  const float* w2 = static_cast<const float*>(p.W2) + h * R;
  for (int c = tid; c < R4; c += nthreads) w2_s[c] = c < R ? w2[c] : 0.f;
  if (e_s != nullptr)
    load_rows_f32(e_s, static_cast<const float*>(p.E), static_cast<int>(p.O), p.O, R, ld, tid,
                  nthreads);
}

// End of the keys that the query tile [i0, i0 + rows) sees: M, or with causal
// masking one past the tile's last query.
__device__ __forceinline__ int64_t causal_key_end(const FwdParams& p, int64_t i0, int rows) {
  if (!p.causal) return p.M;
  const int64_t last = i0 + rows < p.N ? i0 + rows : p.N;
  return p.M < last ? p.M : last;
}

// The tiles a warp's fragment covers: queries i0 + il, keys j0 + jl, and the
// fragment's first row inside the tile (16 x warp).
struct FragPos {
  int64_t b, h, i0, j0;
  int row0;
};

// Window codes of every element (0 everywhere without a window).
template <int kNT, bool kKeyRows>
__device__ __forceinline__ void window_codes(const FwdParams& p, const FragPos& f, int lane,
                                             int (&code)[kNT][4]) {
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      code[nt][e] = 0;
      if (p.window.dims > 0) {
        const int rl = f.row0 + acc_row(lane, e), cl = nt * 8 + acc_col(lane, e);
        const int64_t i = f.i0 + Orient<kKeyRows>::q(rl, cl);
        const int64_t j = f.j0 + Orient<kKeyRows>::k(rl, cl);
        code[nt][e] = (i < p.N && j < p.M) ? window_code(p, f.b, i, j) : -1;
      }
    }
}

// s += b2[h] + sum_r W2[h, r] act(u_ir + (t_jr + E[o(i,j), r])) for every
// element inside the window. u_s / t_s: the query and key tiles' rows,
// e_s the offset table, w2_s the head's W2 row, all zero padded to R4 (a
// multiple of 4: the padding adds W2 0 * act(0) = 0).
template <Activation A, int kNT, bool kKeyRows, bool kWindow>
__device__ __forceinline__ void add_mlp_impl(float (&s)[kNT][4], const int (&code)[kNT][4],
                                        const FwdParams& p, const FragPos& f, const float* u_s,
                                        const float* t_s, const float* e_s, const float* w2_s,
                                        int ld, int R4, int lane) {
  const float b2 = p.b2 ? static_cast<const float*>(p.b2)[f.h] : 0.f;
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[nt][e] += b2;
  const float* row_s = kKeyRows ? t_s : u_s;
  const float* col_s = kKeyRows ? u_s : t_s;
  const int rl0 = f.row0 + (lane >> 2);
  for (int rc = 0; rc < R4; rc += 4) {
    const float4 w = *reinterpret_cast<const float4*>(w2_s + rc);
    const float4 ra = *reinterpret_cast<const float4*>(row_s + rl0 * ld + rc);
    const float4 rb = *reinterpret_cast<const float4*>(row_s + (rl0 + 8) * ld + rc);
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int cl = nt * 8 + acc_col(lane, c);
        const float4 cv = *reinterpret_cast<const float4*>(col_s + cl * ld + rc);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int e = c + 2 * half;
          if (kWindow && code[nt][e] < 0) continue;
          const float4 rv = half ? rb : ra;
          // pair_preact's operand order: u + (t + E)
          const float4 uu = kKeyRows ? cv : rv;
          float4 tt = kKeyRows ? rv : cv;
          if (e_s != nullptr) {
            const float4 ev = *reinterpret_cast<const float4*>(e_s + code[nt][e] * ld + rc);
            tt.x += ev.x; tt.y += ev.y; tt.z += ev.z; tt.w += ev.w;
          }
          float acc = s[nt][e];
          acc += w.x * Act<A, float>::fwd(uu.x + tt.x);
          acc += w.y * Act<A, float>::fwd(uu.y + tt.y);
          acc += w.z * Act<A, float>::fwd(uu.z + tt.z);
          acc += w.w * Act<A, float>::fwd(uu.w + tt.w);
          s[nt][e] = acc;
        }
      }
  }
}

// add_mlp_impl without the per-element window test when there is no window
// (the common case: one branch per element and hidden unit less).
template <Activation A, int kNT, bool kKeyRows>
__device__ __forceinline__ void add_mlp(float (&s)[kNT][4], const int (&code)[kNT][4],
                                        const FwdParams& p, const FragPos& f, const float* u_s,
                                        const float* t_s, const float* e_s, const float* w2_s,
                                        int ld, int R4, int lane) {
  if (p.window.dims > 0)
    add_mlp_impl<A, kNT, kKeyRows, true>(s, code, p, f, u_s, t_s, e_s, w2_s, ld, R4, lane);
  else
    add_mlp_impl<A, kNT, kKeyRows, false>(s, code, p, f, u_s, t_s, e_s, w2_s, ld, R4, lane);
}

// Whether the tile pair [i0, i0 + nq) x [j0, j0 + nk) needs finish_logits at
// all: not when every pair is inside both tiles' bounds, before the causal
// diagonal and no window, key bias or mask is given (plain attention tiles).
__device__ __forceinline__ bool tile_needs_finish(const FwdParams& p, int64_t i0, int nq,
                                                  int64_t j0, int nk) {
  const bool inside = i0 + nq <= p.N && j0 + nk <= p.M;
  const bool below = !p.causal || j0 + nk - 1 <= i0;
  return !(inside && below) || p.window.dims > 0 || p.key_bias != nullptr || p.mask != nullptr;
}

// Support and the additive per-key / per-pair terms: the finished logit of
// every element, -inf off the support (outside the tiles, causal, window,
// padded key, -inf in the mask), where code also becomes -1: `none` mode tells
// the support from a logit that is -inf by itself by the code (weight -inf w
// there, as the oracle's l w). Sum order of the other kernels: content + MLP +
// key bias + mask.
template <int kNT, bool kKeyRows>
__device__ __forceinline__ void finish_logits(float (&s)[kNT][4], int (&code)[kNT][4],
                                              const FwdParams& p, const FragPos& f, int lane) {
  const float ninf = neg_inf<float>();
  const float* kb = p.key_bias ? static_cast<const float*>(p.key_bias) + f.b * p.M : nullptr;
  const float* mk = p.mask ? static_cast<const float*>(p.mask) + f.b * p.mask_stride[0] +
                                 f.h * p.mask_stride[1]
                           : nullptr;
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int rl = f.row0 + acc_row(lane, e), cl = nt * 8 + acc_col(lane, e);
      const int64_t i = f.i0 + Orient<kKeyRows>::q(rl, cl);
      const int64_t j = f.j0 + Orient<kKeyRows>::k(rl, cl);
      float x = s[nt][e];
      bool on = !(i >= p.N || j >= p.M || code[nt][e] < 0 || (p.causal && !causal_allows(i, j)));
      if (on && kb != nullptr) {
        on = kb[j] != ninf;
        x += kb[j];
      }
      if (on && mk != nullptr) {
        const float m = mk[i * p.mask_stride[2] + j * p.mask_stride[3]];
        on = m != ninf;
        x += m;
      }
      s[nt][e] = on ? x : ninf;
      if (!on) code[nt][e] = -1;
    }
}

}  // namespace flash
}  // namespace dense
}  // namespace itnet
