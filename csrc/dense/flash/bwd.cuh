// Backward flash kernels of the dense op (fp16 / bf16 in, fp32 accumulation),
// FlashAttention style: logits recomputed tile by tile from the saved
// log-sum-exp, delta = rowsum(dO O) - grad_lse precomputed (by the entry
// point), dS = P (dP - delta) in softmax mode, dS = w dP in `none` mode.
//
// Two passes, neither with floating-point atomics (deterministic; only the
// offset-table gradient uses atomics):
//  - key pass, block = (kBk = 16 Cfg::kWarps keys, h, b; default 64 keys, 4
//    warps), one warp per 16 keys, looping over query tiles of kBq: S^T = K Q^T, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q in
//    registers; the key-side MLP gradient dt (rows of the warp, shared-memory
//    accumulators), dW2 / db2 per block, the key-weight gradient per key.
//  - query pass, block = (kBr = 16 Cfg::kWarps queries, h, b), looping over
//    key tiles of kBc: S, dP,
//    dQ += dS K and the query-side MLP gradient du.
// Per-head and per-block partial sums (FlashGrads) are reduced by the caller.
#pragma once

#include <c10/cuda/CUDAException.h>

#include "common/dispatch.h"
#include "dense/flash/config.h"
#include "dense/flash/logits.cuh"
#include "dense/flash/sweep.h"
#include "common/cuda_launch.h"

namespace itnet {
namespace dense {
namespace flash {

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// MLP part of the backward for the elements of one fragment with logit
// gradient ds: per hidden unit r, a = act(pre), a' = act'(pre),
// dpre = ds W2[h, r] a'. Adds sum over the fragment's columns of dpre to
// the rows' accumulators row_acc (dt in the key pass, du in the query pass;
// rows owned by the warp: plain adds by one lane per row), and, when given,
// sum ds a to the warp's dW2 row dw_acc and dpre to the offset table's
// gradient de_acc (shared-memory atomics).
template <Activation A, int kNT, bool kKeyRows>
__device__ __forceinline__ void mlp_bwd(const float (&ds)[kNT][4], const int (&code)[kNT][4],
                                        const FragPos& f, const float* u_s, const float* t_s,
                                        const float* e_s, const float* w2_s, int ld, int R4,
                                        int lane, float* row_acc, float* dw_acc, float* de_acc) {
  const float* row_s = kKeyRows ? t_s : u_s;
  const float* col_s = kKeyRows ? u_s : t_s;
  const int rl0 = f.row0 + (lane >> 2);
  for (int rc = 0; rc < R4; rc += 4) {
    const float4 w = *reinterpret_cast<const float4*>(w2_s + rc);
    const float wv[4] = {w.x, w.y, w.z, w.w};
    const float4 ra = *reinterpret_cast<const float4*>(row_s + rl0 * ld + rc);
    const float4 rb = *reinterpret_cast<const float4*>(row_s + (rl0 + 8) * ld + rc);
    float racc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    float wacc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int cl = nt * 8 + acc_col(lane, c);
        const float4 cv = *reinterpret_cast<const float4*>(col_s + cl * ld + rc);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int e = c + 2 * half;
          const float g = ds[nt][e];
          if (code[nt][e] < 0 || g == 0.f) continue;
          const float4 rv = half ? rb : ra;
          const float4 uu = kKeyRows ? cv : rv;
          float4 tt = kKeyRows ? rv : cv;
          if (e_s != nullptr) {
            const float4 ev = *reinterpret_cast<const float4*>(e_s + code[nt][e] * ld + rc);
            tt.x += ev.x; tt.y += ev.y; tt.z += ev.z; tt.w += ev.w;
          }
          const float pre[4] = {uu.x + tt.x, uu.y + tt.y, uu.z + tt.z, uu.w + tt.w};
#pragma unroll
          for (int x = 0; x < 4; ++x) {
            float da;
            const float a = Act<A, float>::fwd_grad(pre[x], da);
            wacc[x] += g * a;
            const float dpre = g * wv[x] * da;
            racc[half][x] += dpre;
            if (de_acc != nullptr) atomicAdd(de_acc + code[nt][e] * ld + rc + x, dpre);
          }
        }
      }
#pragma unroll
    for (int half = 0; half < 2; ++half)
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const float r = quad_sum(racc[half][x]);
        if ((lane & 3) == 0) row_acc[(rl0 + 8 * half) * ld + rc + x] += r;
      }
    if (dw_acc != nullptr) {
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const float r = warp_sum(wacc[x]);
        if (lane == 0) dw_acc[rc + x] += r;
      }
    }
  }
}

// Stores a warp's 16 x kD fp32 accumulator rows (times `mul`) as 16-bit rows
// row0 + 0..15 of a (rows, D) tensor, rows < nrows and columns < D only.
template <class T, int kDT>
__device__ __forceinline__ void store_rows(T* g, const float (&c)[kDT][4], float mul, int64_t row0,
                                           int64_t nrows, int D, int lane) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t r = row0 + (lane >> 2) + 8 * half;
    if (r >= nrows) continue;
#pragma unroll
    for (int d = 0; d < kDT; ++d) {
      const int col = d * 8 + 2 * (lane & 3);
      if (col < D)
        *reinterpret_cast<uint32_t*>(g + r * D + col) =
            Elem<T>::pack(c[d][2 * half] * mul, c[d][2 * half + 1] * mul);
    }
  }
}

// ---------------------------------------------------------------------------
// Key pass.
template <class T, class Cfg, bool kMlp, Activation A>
__global__ void __launch_bounds__(Cfg::kThreads)
    bwd_kv_kernel(const BwdParams bp, const FlashGrads G, const BwdSmem L) {
#if ITNET_FLASH_ARCH_OK
  constexpr int kD = Cfg::kD, kWarps = Cfg::kWarps;
  constexpr int kBk = Cfg::kBk, kBq = Cfg::kBq, kLd = Cfg::kLd;
  constexpr int kNQ = kBq / 8;  // n-tiles of S^T (queries)
  constexpr int kDT = kD / 8;
  const FwdParams& p = bp.f;
  ITNET_DYNAMIC_SHARED(unsigned char, smem);
  T* k_s = reinterpret_cast<T*>(smem);
  T* v_s = k_s + kBk * kLd;
  // two buffers of everything per query tile: the next tile loads during this one
  T* q_buf = v_s + kBk * kLd;          // [2][kBq][kLd]
  T* do_buf = q_buf + 2 * kBq * kLd;   // [2][kBq][kLd]
  float* lse_buf = reinterpret_cast<float*>(do_buf + 2 * kBq * kLd);  // [2][kBq]
  float* delta_buf = lse_buf + 2 * kBq;                               // [2][kBq]
  const int ld = L.base.ld, R4 = L.base.R4;
  float* u_buf = reinterpret_cast<float*>(smem + L.base.off_u);       // [2][kBq][ld]
  float* t_s = reinterpret_cast<float*>(smem + L.base.off_t);
  float* w2_s = reinterpret_cast<float*>(smem + L.base.off_w);
  float* e_s = p.E != nullptr ? reinterpret_cast<float*>(smem + L.base.off_e) : nullptr;
  float* dt_s = reinterpret_cast<float*>(smem + L.off_rows);
  float* dw_s = reinterpret_cast<float*>(smem + L.off_dw);
  float* de_s = (kMlp && G.dE != nullptr) ? reinterpret_cast<float*>(smem + L.off_de) : nullptr;

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / kWarp, lane = tid % kWarp;
  const int64_t h = blockIdx.y, b = blockIdx.z;
  const int64_t kt = blockIdx.x;
  const int64_t j0 = kt * kBk;
  const int64_t bh = b * p.H + h;
  const int Dk = static_cast<int>(p.Dk), Dv = static_cast<int>(p.Dv);
  const int R = static_cast<int>(p.R);
  const T* q = p.content ? static_cast<const T*>(p.q) + bh * p.N * Dk : nullptr;
  const T* k = p.content ? static_cast<const T*>(p.k) + (bh * p.M + j0) * Dk : nullptr;
  const T* v = static_cast<const T*>(p.v) + (bh * p.M + j0) * Dv;
  const T* dout = static_cast<const T*>(bp.dout) + bh * p.N * Dv;
  const float* lse = p.softmax ? static_cast<const float*>(bp.lse) + bh * p.N : nullptr;
  const float* delta = p.softmax ? static_cast<const float*>(bp.delta) + bh * p.N : nullptr;
  const float* kscale = p.key_scale ? static_cast<const float*>(p.key_scale) + b * p.M : nullptr;

  if (p.content) load_rows_async<T, kBk, kD, kLd, Cfg::kThreads>(k_s, k, Dk, p.M - j0, Dk, tid);
  load_rows_async<T, kBk, kD, kLd, Cfg::kThreads>(v_s, v, Dv, p.M - j0, Dv, tid);
  cp_async_commit();
  if (kMlp) {
    const float* t = p.t ? static_cast<const float*>(p.t) + (b * p.M + j0) * R : nullptr;
    load_rows_f32(t_s, t, kBk, p.M - j0, R, ld, tid, Cfg::kThreads);
    stage_mlp_params(p, h, w2_s, e_s, ld, R4, tid, Cfg::kThreads);
    for (int c = tid; c < kBk * ld; c += Cfg::kThreads) dt_s[c] = 0.f;
    for (int c = tid; c < kWarps * ld; c += Cfg::kThreads) dw_s[c] = 0.f;
    if (de_s != nullptr)
      for (int64_t c = tid; c < p.O * ld; c += Cfg::kThreads) de_s[c] = 0.f;
  }

  float dk[kDT][4], dv[kDT][4];
  zero_acc(dk);
  zero_acc(dv);
  float kw[2] = {0.f, 0.f};  // key-weight gradient of the warp's two rows (this lane's share)
  float db2 = 0.f;
  const float scale = static_cast<float>(p.scale);
  FragPos f{b, h, 0, j0, warp * 16};

  // causal: queries before the tile's first key see none of its keys
  const int64_t it0 = p.causal ? j0 / kBq : 0;
  const int64_t nqt = (p.N + kBq - 1) / kBq;
  // Q, dO, lse, delta (0 in `none` mode) and u rows of query tile `it` into buffer `buf`
  auto issue = [&](int64_t it, int buf) {
    const int64_t i0 = it * kBq;
    if (p.content)
      load_rows_async<T, kBq, kD, kLd, Cfg::kThreads>(q_buf + buf * kBq * kLd, q + i0 * Dk, Dk,
                                                      p.N - i0, Dk, tid);
    load_rows_async<T, kBq, kD, kLd, Cfg::kThreads>(do_buf + buf * kBq * kLd, dout + i0 * Dv, Dv,
                                                    p.N - i0, Dv, tid);
    load_vec_f32_async(lse_buf + buf * kBq, lse ? lse + i0 : nullptr, kBq, p.N - i0, tid,
                       Cfg::kThreads);
    load_vec_f32_async(delta_buf + buf * kBq, delta ? delta + i0 : nullptr, kBq, p.N - i0, tid,
                       Cfg::kThreads);
    if (kMlp) {
      const float* u = p.u ? static_cast<const float*>(p.u) + (b * p.N + i0) * R : nullptr;
      load_rows_f32_async(u_buf + buf * kBq * ld, u, kBq, p.N - i0, R, ld, tid, Cfg::kThreads);
    }
  };
  if (it0 < nqt) issue(it0, 0);
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();  // K, V, t, W2, E, the first query tile and the zeroed accumulators

  for (int64_t it = it0; it < nqt; ++it) {
    const int64_t i0 = it * kBq;
    f.i0 = i0;
    const int buf = static_cast<int>((it - it0) & 1);
    if (it + 1 < nqt) issue(it + 1, buf ^ 1);  // buffer free: the last barrier
    cp_async_commit();
    const T* q_s = q_buf + buf * kBq * kLd;
    const T* do_s = do_buf + buf * kBq * kLd;
    const float* lse_s = lse_buf + buf * kBq;
    const float* delta_s = delta_buf + buf * kBq;
    const float* u_s = u_buf + buf * kBq * ld;

    float s[kNQ][4], dp[kNQ][4];
    zero_acc(s);
    zero_acc(dp);
    if (p.content) {
      mma_rows_nt<T, kD, kNQ, kLd>(s, k_s, warp * 16, q_s, Dk, lane);  // S^T = K Q^T
#pragma unroll
      for (int nt = 0; nt < kNQ; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] *= scale;
    }
    mma_rows_nt<T, kD, kNQ, kLd>(dp, v_s, warp * 16, do_s, Dv, lane);  // dP^T = V dO^T

    int code[kNQ][4];
    window_codes<kNQ, true>(p, f, lane, code);
    if (kMlp) add_mlp<A, kNQ, true>(s, code, p, f, u_s, t_s, e_s, w2_s, ld, R4, lane);
    if (tile_needs_finish(p, i0, kBq, j0, kBk)) finish_logits<kNQ, true>(s, code, p, f, lane);

    // s -> the weight of the pair (P, or l w), dp -> the logit gradient dS
#pragma unroll
    for (int nt = 0; nt < kNQ; ++nt) {
      // the lane's two query columns of this n-tile: one 8-byte load each for lse, delta
      const int q0 = nt * 8 + acc_col(lane, 0);
      const float2 lse2 = *reinterpret_cast<const float2*>(lse_s + q0);
      const float2 delta2 = *reinterpret_cast<const float2*>(delta_s + q0);
      const float shift[2] = {softmax_bwd_shift(lse2.x), softmax_bwd_shift(lse2.y)};
      const float dlt[2] = {delta2.x, delta2.y};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float x = s[nt][e];
        float wgt = 0.f, g = 0.f;
        // on the support: softmax, a finite logit (-inf is weight 0 either way); `none`, the
        // code (finish_logits), since a logit of -inf by itself has weight -inf w
        if (p.softmax ? x != neg_inf<float>() : code[nt][e] >= 0) {
          if (p.softmax) {
            wgt = __expf(x - shift[e & 1]);
            g = wgt * (dp[nt][e] - dlt[e & 1]);
            kw[e >> 1] += g;  // d / d log w_j
          } else {
            const int64_t j = j0 + f.row0 + acc_row(lane, e);
            const float w = kscale != nullptr ? kscale[j] : 1.f;
            wgt = x * w;
            g = dp[nt][e] * w;
            kw[e >> 1] += dp[nt][e] * x;  // d / d w_j
          }
        }
        s[nt][e] = wgt;
        dp[nt][e] = g;
        db2 += g;
      }
    }

    // (before the MMAs: code[][] dies here, not next to the dK / dV accumulators)
    if (kMlp)
      mlp_bwd<A, kNQ, true>(dp, code, f, u_s, t_s, e_s, w2_s, ld, R4, lane, dt_s,
                            dw_s + warp * ld, de_s);
    // dV += P^T dO, dK += dS^T Q (k = queries)
    mma_acc_nn<T, kBq / 16, kD, kLd>(dv, s, do_s, Dv, lane);
    if (p.content) mma_acc_nn<T, kBq / 16, kD, kLd>(dk, dp, q_s, Dk, lane);
    cp_async_wait_all();
    __syncthreads();  // the next tile is in place; every warp is done with this one
  }

  // key rows of the warp: dk, dv (16-bit), key-weight gradient (per head)
  const int64_t jw = j0 + warp * 16;
  if (p.content) store_rows<T>(static_cast<T*>(G.dk) + bh * p.M * Dk, dk, scale, jw, p.M, Dk, lane);
  store_rows<T>(static_cast<T*>(G.dv) + bh * p.M * Dv, dv, 1.f, jw, p.M, Dv, lane);
  if (G.dkw != nullptr) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const float r = quad_sum(kw[half]);
      const int64_t j = jw + (lane >> 2) + 8 * half;
      if ((lane & 3) == 0 && j < p.M) G.dkw[(h * p.B + b) * p.M + j] = r;
    }
  }
  if (kMlp) {
    const int64_t nkt = gridDim.x;
    const float tot = warp_sum(db2);
    ITNET_SHARED(float, db2_s, [kWarps]);
    if (lane == 0) db2_s[warp] = tot;
    __syncthreads();  // dt_s, dw_s, de_s, db2_s complete
    if (G.dt != nullptr) {
      for (int c = tid; c < kBk * R; c += Cfg::kThreads) {
        const int r = c % R, jl = c / R;
        if (j0 + jl < p.M) G.dt[((h * p.B + b) * p.M + j0 + jl) * R + r] = dt_s[jl * ld + r];
      }
    }
    float* dW2 = G.dW2 + (bh * nkt + kt) * R;
    // the warps' partial sums in warp order (a fixed order: deterministic)
    for (int r = tid; r < R; r += Cfg::kThreads) {
      float acc = dw_s[r];
      for (int w = 1; w < kWarps; ++w) acc += dw_s[w * ld + r];
      dW2[r] = acc;
    }
    if (G.db2 != nullptr && tid == 0) {
      float acc = db2_s[0];
      for (int w = 1; w < kWarps; ++w) acc += db2_s[w];
      G.db2[bh * nkt + kt] = acc;
    }
    if (de_s != nullptr)
      for (int64_t c = tid; c < p.O * R; c += Cfg::kThreads) {
        const float x = de_s[(c / R) * ld + c % R];
        if (x != 0.f) atomicAdd(G.dE + c, x);
      }
  }
#endif
}

// ---------------------------------------------------------------------------
// Query pass.
template <class T, class Cfg, bool kMlp, Activation A>
__global__ void __launch_bounds__(Cfg::kThreads, kMlp ? 1 : Cfg::kQMinBlocks)
    bwd_q_kernel(const BwdParams bp, const FlashGrads G, const BwdSmem L) {
#if ITNET_FLASH_ARCH_OK
  constexpr int kD = Cfg::kD;
  constexpr int kBr = Cfg::kBr, kBc = Cfg::kBc, kLd = Cfg::kLd;
  constexpr int kNT = kBc / 8;
  constexpr int kDT = kD / 8;
  const FwdParams& p = bp.f;
  ITNET_DYNAMIC_SHARED(unsigned char, smem);
  T* q_s = reinterpret_cast<T*>(smem);
  T* do_s = q_s + kBr * kLd;
  // two buffers of everything per key tile: the next tile loads during this one
  T* k_buf = do_s + kBr * kLd;        // [2][kBc][kLd]
  T* v_buf = k_buf + 2 * kBc * kLd;   // [2][kBc][kLd]
  const int ld = L.base.ld, R4 = L.base.R4;
  float* u_s = reinterpret_cast<float*>(smem + L.base.off_u);
  float* t_buf = reinterpret_cast<float*>(smem + L.base.off_t);  // [2][kBc][ld]
  float* w2_s = reinterpret_cast<float*>(smem + L.base.off_w);
  float* e_s = p.E != nullptr ? reinterpret_cast<float*>(smem + L.base.off_e) : nullptr;
  float* du_s = reinterpret_cast<float*>(smem + L.off_rows);

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / kWarp, lane = tid % kWarp;
  const int64_t h = blockIdx.y, b = blockIdx.z;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kBr;
  const int64_t bh = b * p.H + h;
  const int Dk = static_cast<int>(p.Dk), Dv = static_cast<int>(p.Dv);
  const int R = static_cast<int>(p.R);
  const bool want_dq = p.content && G.dq != nullptr;
  const bool want_du = kMlp && G.du != nullptr;
  const T* q = p.content ? static_cast<const T*>(p.q) + (bh * p.N + i0) * Dk : nullptr;
  const T* k = p.content ? static_cast<const T*>(p.k) + bh * p.M * Dk : nullptr;
  const T* v = static_cast<const T*>(p.v) + bh * p.M * Dv;
  const T* dout = static_cast<const T*>(bp.dout) + (bh * p.N + i0) * Dv;
  const float* kscale = p.key_scale ? static_cast<const float*>(p.key_scale) + b * p.M : nullptr;

  if (p.content) load_rows_async<T, kBr, kD, kLd, Cfg::kThreads>(q_s, q, Dk, p.N - i0, Dk, tid);
  load_rows_async<T, kBr, kD, kLd, Cfg::kThreads>(do_s, dout, Dv, p.N - i0, Dv, tid);
  cp_async_commit();
  if (kMlp) {
    const float* u = p.u ? static_cast<const float*>(p.u) + (b * p.N + i0) * R : nullptr;
    load_rows_f32(u_s, u, kBr, p.N - i0, R, ld, tid, Cfg::kThreads);
    stage_mlp_params(p, h, w2_s, e_s, ld, R4, tid, Cfg::kThreads);
    for (int c = tid; c < kBr * ld; c += Cfg::kThreads) du_s[c] = 0.f;
  }

  // lse and delta of the lane's two rows
  float row_shift[2] = {0.f, 0.f}, row_delta[2] = {0.f, 0.f};
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t i = i0 + warp * 16 + (lane >> 2) + 8 * half;
    if (p.softmax && i < p.N) {
      row_shift[half] = softmax_bwd_shift(static_cast<const float*>(bp.lse)[bh * p.N + i]);
      row_delta[half] = static_cast<const float*>(bp.delta)[bh * p.N + i];
    }
  }

  float dq[kDT][4];
  zero_acc(dq);
  const float scale = static_cast<float>(p.scale);
  FragPos f{b, h, i0, 0, warp * 16};
  const int64_t nkt = (causal_key_end(p, i0, kBr) + kBc - 1) / kBc;
  // K, V and t rows of key tile `kt` into buffer `buf`
  auto issue = [&](int64_t kt, int buf) {
    const int64_t j0 = kt * kBc;
    if (p.content)
      load_rows_async<T, kBc, kD, kLd, Cfg::kThreads>(k_buf + buf * kBc * kLd, k + j0 * Dk, Dk,
                                                      p.M - j0, Dk, tid);
    load_rows_async<T, kBc, kD, kLd, Cfg::kThreads>(v_buf + buf * kBc * kLd, v + j0 * Dv, Dv,
                                                    p.M - j0, Dv, tid);
    if (kMlp) {
      const float* t = p.t ? static_cast<const float*>(p.t) + (b * p.M + j0) * R : nullptr;
      load_rows_f32_async(t_buf + buf * kBc * ld, t, kBc, p.M - j0, R, ld, tid, Cfg::kThreads);
    }
  };
  if (nkt > 0) issue(0, 0);
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();  // Q, dO, u, W2, E, the first key tile and the zeroed du rows

  for (int64_t kt = 0; kt < nkt; ++kt) {
    const int64_t j0 = kt * kBc;
    f.j0 = j0;
    const int buf = static_cast<int>(kt & 1);
    if (kt + 1 < nkt) issue(kt + 1, buf ^ 1);  // buffer free: the last barrier
    cp_async_commit();
    const T* k_s = k_buf + buf * kBc * kLd;
    const T* v_s = v_buf + buf * kBc * kLd;
    const float* t_s = t_buf + buf * kBc * ld;

    float s[kNT][4], dp[kNT][4];
    zero_acc(s);
    zero_acc(dp);
    if (p.content) {
      mma_rows_nt<T, kD, kNT, kLd>(s, q_s, warp * 16, k_s, Dk, lane);  // S = Q K^T
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] *= scale;
    }
    mma_rows_nt<T, kD, kNT, kLd>(dp, do_s, warp * 16, v_s, Dv, lane);  // dP = dO V^T

    int code[kNT][4];
    window_codes<kNT, false>(p, f, lane, code);
    if (kMlp) add_mlp<A, kNT, false>(s, code, p, f, u_s, t_s, e_s, w2_s, ld, R4, lane);
    if (tile_needs_finish(p, i0, kBr, j0, kBc)) finish_logits<kNT, false>(s, code, p, f, lane);

#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float x = s[nt][e];
        float g = 0.f;
        if (p.softmax ? x != neg_inf<float>() : code[nt][e] >= 0) {  // (as in the key pass)
          if (p.softmax) {
            g = __expf(x - row_shift[e >> 1]) * (dp[nt][e] - row_delta[e >> 1]);
          } else {
            const int64_t j = j0 + nt * 8 + acc_col(lane, e);
            g = dp[nt][e] * (kscale != nullptr ? kscale[j] : 1.f);
          }
        }
        dp[nt][e] = g;
      }

    if (want_du)
      mlp_bwd<A, kNT, false>(dp, code, f, u_s, t_s, e_s, w2_s, ld, R4, lane, du_s, nullptr,
                             nullptr);
    if (want_dq) mma_acc_nn<T, kBc / 16, kD, kLd>(dq, dp, k_s, Dk, lane);  // dQ += dS K
    cp_async_wait_all();
    __syncthreads();  // the next tile is in place; every warp is done with this one
  }

  if (want_dq)
    store_rows<T>(static_cast<T*>(G.dq) + bh * p.N * Dk, dq, scale, i0 + warp * 16, p.N, Dk, lane);
  if (want_du) {
    __syncthreads();
    for (int c = tid; c < kBr * R; c += Cfg::kThreads) {
      const int r = c % R, il = c / R;
      if (i0 + il < p.N) G.du[((h * p.B + b) * p.N + i0 + il) * R + r] = du_s[il * ld + r];
    }
  }
#endif
}

template <class T, class Cfg, bool kMlp, Activation A>
void launch_bwd_kernels(const BwdParams& bp, const FlashGrads& G, cudaStream_t stream) {
  const FwdParams& p = bp.f;
  const BwdSmem Lkv = make_bwd_smem(Cfg::kKvBytes, 2 * Cfg::kBq, Cfg::kBk, Cfg::kBk, Cfg::kWarps,
                                    true, p, G.dE != nullptr);
  auto kv = &bwd_kv_kernel<T, Cfg, kMlp, A>;
  if (p.M > 0) {  // (no key tiles: no key-side gradient has elements)
    if (Lkv.bytes > 48 * 1024)
      C10_CUDA_CHECK(cudaFuncSetAttribute(kv, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(Lkv.bytes)));
    const dim3 gkv(static_cast<unsigned>((p.M + Cfg::kBk - 1) / Cfg::kBk),
                   static_cast<unsigned>(p.H), static_cast<unsigned>(p.B));
    TORCH_CHECK(G.key_tiles == static_cast<int64_t>(gkv.x),
                "flash backward: the per-key-tile buffers were sized for ", G.key_tiles,
                " key tiles, the kernel has ", gkv.x, " (the flash configuration changed during "
                "the call? set_flash_config is process-wide: not while other threads compute)");
    ITNET_LAUNCH(gkv, Cfg::kThreads, Lkv.bytes, stream, kv)(bp, G, Lkv);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // with M = 0 the query pass still runs: it writes dq = 0 and du = 0
  const bool want_q = (p.content && G.dq != nullptr) || (kMlp && G.du != nullptr);
  if (!want_q || p.N == 0) return;
  const BwdSmem Lq = make_bwd_smem(Cfg::kQBytes, Cfg::kBr, 2 * Cfg::kBc, Cfg::kBr, Cfg::kWarps,
                                   false, p, false);
  auto qk = &bwd_q_kernel<T, Cfg, kMlp, A>;
  if (Lq.bytes > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(qk, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(Lq.bytes)));
  const dim3 gq(static_cast<unsigned>((p.N + Cfg::kBr - 1) / Cfg::kBr),
                static_cast<unsigned>(p.H), static_cast<unsigned>(p.B));
  ITNET_LAUNCH(gq, Cfg::kThreads, Lq.bytes, stream, qk)(bp, G, Lq);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The default instances (bwd_<dtype>_d<kD>.cu): every activation.
template <class T, int kD>
void launch_bwd(const BwdParams& bp, const FlashGrads& G, cudaStream_t stream) {
  using Cfg = BwdTiles<kD>;
  if (!bp.f.mlp) return launch_bwd_kernels<T, Cfg, false, Activation::Relu>(bp, G, stream);
  ITNET_DISPATCH_ACTIVATION(bp.f.activation, A, launch_bwd_kernels<T, Cfg, true, A>(bp, G, stream));
}

// A sweep instance (sweep/): attention only, or the MLP with kSweepActivation.
template <class T, class Cfg>
void launch_bwd_sweep(const BwdParams& bp, const FlashGrads& G, cudaStream_t stream) {
  if (!bp.f.mlp) return launch_bwd_kernels<T, Cfg, false, Activation::Relu>(bp, G, stream);
  check_sweep_activation(bp.f.activation);
  launch_bwd_kernels<T, Cfg, true, kSweepActivation>(bp, G, stream);
}

template <class T, class Cfg>
bool register_bwd_sweep(const char* name, Dtype dt) {
  add_bwd_sweep(BwdSweep{name, Cfg::kD, dt, &launch_bwd_sweep<T, Cfg>, &bwd_bytes_cfg<Cfg>,
                         Cfg::kBk});
  return true;
}

}  // namespace flash
}  // namespace dense
}  // namespace itnet

// A backward sweep instance for head dims 64 and 128: WARPS warps of 16 rows,
// tiles of TILE rows streamed past them.
#define ITNET_FLASH_SWEEP_BWD(T, DT, WARPS, TILE, NAME)                              \
  namespace itnet {                                                                  \
  namespace dense {                                                                  \
  namespace flash {                                                                  \
  namespace {                                                                        \
  [[maybe_unused]] const bool registered =                                           \
      register_bwd_sweep<T, BwdCfg<64, WARPS, TILE>>(NAME, Dtype::DT) &&             \
      register_bwd_sweep<T, BwdCfg<128, WARPS, TILE>>(NAME, Dtype::DT);              \
  }                                                                                  \
  }                                                                                  \
  }                                                                                  \
  }
