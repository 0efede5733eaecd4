// Forward flash kernel of the dense op (fp16 / bf16 in, fp32 accumulation).
//
// Block = (query tile, head h, batch b), Cfg::kWarps warps of kRB blocks of 16
// query rows (config.h; the default: 4 warps, kRB = 2 without the pair MLP up
// to head dim 128; Q fragments stay in registers for head dims <= 64).
// Q (kBr x kD), K and V (kBc x kD) tiles are staged in shared memory by
// cp.async; per key tile a warp computes its 16 x kBc logits with MMAs
// (S = Q K^T), finishes them element by element (logits.cuh: pair MLP,
// support, bias, mask), updates the online-softmax state of its rows (the
// shared helpers of common/math.h) and accumulates O += P V with P straight
// from the accumulator registers. With 2 load stages (the default) loads
// overlap compute as in FlashAttention 2: V of tile j streams in during
// Q K_j^T, K of tile j + 1 during softmax and P V_j; with 1, K_j and V_j load
// together before Q K_j^T. The pair MLP runs in float32 or, in the packed
// configurations, on 16-bit pairs (packed.cuh). `none` mode accumulates a = l w instead. Output rows are written
// once, in the input dtype; lse in float32.
#pragma once

#include <c10/cuda/CUDAException.h>

#include "common/dispatch.h"
#include "dense/flash/config.h"
#include "dense/flash/logits.cuh"
#include "dense/flash/packed.cuh"
#include "dense/flash/sweep.h"
#include "common/cuda_launch.h"

namespace itnet {
namespace dense {
namespace flash {

template <class T, class Cfg, bool kMlp, Activation A>
__global__ void __launch_bounds__(Cfg::kThreads) fwd_kernel(const FwdParams p, const Smem L) {
#if ITNET_FLASH_ARCH_OK
  constexpr int kD = Cfg::kD;
  constexpr bool kPacked = kMlp && Cfg::kPacked;
  constexpr bool kTwoStage = Cfg::kStages == 2;
  constexpr int kBr = Cfg::kBr, kBc = Cfg::kBc, kLd = Cfg::kLd, kRB = Cfg::kRB;
  constexpr int kNT = kBc / 8;  // n-tiles of S
  constexpr int kDT = kD / 8;   // n-tiles of O
  constexpr int kKT = kD / 16;  // k-steps of Q K^T
  ITNET_DYNAMIC_SHARED(unsigned char, smem);
  T* q_s = reinterpret_cast<T*>(smem);
  T* k_s = q_s + kBr * kLd;
  T* v_s = k_s + kBc * kLd;
  float* u_s = reinterpret_cast<float*>(smem + L.off_u);
  float* t_s = reinterpret_cast<float*>(smem + L.off_t);
  float* w2_s = reinterpret_cast<float*>(smem + L.off_w);
  float* e_s = p.E != nullptr ? reinterpret_cast<float*>(smem + L.off_e) : nullptr;

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / kWarp, lane = tid % kWarp;
  const int64_t h = blockIdx.y, b = blockIdx.z;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kBr;
  const int64_t bh = b * p.H + h;
  const int Dk = static_cast<int>(p.Dk), Dv = static_cast<int>(p.Dv);
  const int R = static_cast<int>(p.R);
  const T* q = p.content ? static_cast<const T*>(p.q) + (bh * p.N + i0) * Dk : nullptr;
  const T* k = p.content ? static_cast<const T*>(p.k) + bh * p.M * Dk : nullptr;
  const T* v = static_cast<const T*>(p.v) + bh * p.M * Dv;
  const float* kscale = p.key_scale ? static_cast<const float*>(p.key_scale) + b * p.M : nullptr;
  // the warp's row blocks: tile rows 16 (kRB warp + rb) + 0..15
  auto row0 = [&](int rb) { return (warp * kRB + rb) * 16; };

  const int64_t nkt = (causal_key_end(p, i0, kBr) + kBc - 1) / kBc;

  if (p.content) {
    load_rows_async<T, kBr, kD, kLd, Cfg::kThreads>(q_s, q, Dk, p.N - i0, Dk, tid);
    if (kTwoStage && nkt > 0)
      load_rows_async<T, kBc, kD, kLd, Cfg::kThreads>(k_s, k, Dk, p.M, Dk, tid);
  }
  cp_async_commit();
  if (kMlp) {
    const float* u = p.u ? static_cast<const float*>(p.u) + (b * p.N + i0) * R : nullptr;
    if (kPacked) {
      load_rows_packed<T>(u_s, u, kBr, p.N - i0, R, L.ld, tid, Cfg::kThreads);
      stage_mlp_params_packed<T>(p, h, w2_s, e_s, L.ld, L.R4, tid, Cfg::kThreads);
    } else {
      load_rows_f32(u_s, u, kBr, p.N - i0, R, L.ld, tid, Cfg::kThreads);
      stage_mlp_params(p, h, w2_s, e_s, L.ld, L.R4, tid, Cfg::kThreads);
    }
  }
  cp_async_wait_all();
  __syncthreads();

  // Q fragments in registers for the small head dims (no ldmatrix per key tile)
  uint32_t qf[Cfg::kQInRegs ? kRB : 1][Cfg::kQInRegs ? kKT : 1][4];
  if (Cfg::kQInRegs && p.content) {
#pragma unroll
    for (int rb = 0; rb < kRB; ++rb)
#pragma unroll
      for (int kk = 0; kk < kKT; ++kk)
        if (kk * 16 < Dk) frag_a(qf[rb][kk], q_s, kLd, row0(rb), kk * 16, lane);
  }

  float o[kRB][kDT][4];
  float m[kRB][2], l[kRB][2];
#pragma unroll
  for (int rb = 0; rb < kRB; ++rb) {
    zero_acc(o[rb]);
    m[rb][0] = m[rb][1] = neg_inf<float>();
    l[rb][0] = l[rb][1] = 0.f;
  }
  const float scale = static_cast<float>(p.scale);

  for (int64_t kt = 0; kt < nkt; ++kt) {
    const int64_t j0 = kt * kBc;
    if (!kTwoStage && p.content)
      load_rows_async<T, kBc, kD, kLd, Cfg::kThreads>(k_s, k + j0 * Dk, Dk, p.M - j0, Dk, tid);
    load_rows_async<T, kBc, kD, kLd, Cfg::kThreads>(v_s, v + j0 * Dv, Dv, p.M - j0, Dv, tid);
    cp_async_commit();
    if (kMlp) {
      const float* t = p.t ? static_cast<const float*>(p.t) + (b * p.M + j0) * R : nullptr;
      if (kPacked)
        load_rows_packed<T>(t_s, t, kBc, p.M - j0, R, L.ld, tid, Cfg::kThreads);
      else
        load_rows_f32(t_s, t, kBc, p.M - j0, R, L.ld, tid, Cfg::kThreads);
    }
    if (!kTwoStage) {
      cp_async_wait_all();
      __syncthreads();  // K_j, V_j and t_j in place
    }

    float s[kRB][kNT][4];
#pragma unroll
    for (int rb = 0; rb < kRB; ++rb) zero_acc(s[rb]);
    if (p.content) {
#pragma unroll
      for (int kk = 0; kk < kKT; ++kk) {
        if (kk * 16 >= Dk) break;
        uint32_t a[kRB][4];
#pragma unroll
        for (int rb = 0; rb < kRB; ++rb) {
          if (Cfg::kQInRegs) {
#pragma unroll
            for (int x = 0; x < 4; ++x) a[rb][x] = qf[Cfg::kQInRegs ? rb : 0][Cfg::kQInRegs ? kk : 0][x];
          } else {
            frag_a(a[rb], q_s, kLd, row0(rb), kk * 16, lane);
          }
        }
#pragma unroll
        for (int np = 0; np < kNT / 2; ++np) {
          uint32_t bb[4];
          frag_b_nk(bb, k_s, kLd, np * 16, kk * 16, lane);
#pragma unroll
          for (int rb = 0; rb < kRB; ++rb) {
            mma_16816<T>(s[rb][2 * np], a[rb], bb[0], bb[1]);
            mma_16816<T>(s[rb][2 * np + 1], a[rb], bb[2], bb[3]);
          }
        }
      }
#pragma unroll
      for (int rb = 0; rb < kRB; ++rb)
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[rb][nt][e] *= scale;
    }
    if (kTwoStage) {
      cp_async_wait_all();
      __syncthreads();  // V_j and t_j in place; every warp is done with K_j
      if (kt + 1 < nkt && p.content) {
        load_rows_async<T, kBc, kD, kLd, Cfg::kThreads>(k_s, k + (j0 + kBc) * Dk, Dk,
                                                        p.M - j0 - kBc, Dk, tid);
      }
      cp_async_commit();
    }

    const bool finish = tile_needs_finish(p, i0, kBr, j0, kBc);
#pragma unroll
    for (int rb = 0; rb < kRB; ++rb) {
      // code < 0: off the support (window, finish_logits); computed where it can be
      int code[kNT][4];
      if (kMlp || finish) {
        const FragPos f{b, h, i0, j0, row0(rb)};
        window_codes<kNT, false>(p, f, lane, code);
        if (kPacked)
          add_mlp_packed<T, A, kNT>(s[rb], code, p, f, u_s, t_s, e_s, w2_s, L.ld, L.R4, lane);
        else if (kMlp)
          add_mlp<A, kNT, false>(s[rb], code, p, f, u_s, t_s, e_s, w2_s, L.ld, L.R4, lane);
        if (finish) finish_logits<kNT, false>(s[rb], code, p, f, lane);
      }

      if (p.softmax) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          float mx = neg_inf<float>();
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt)
            mx = fmaxf(mx, fmaxf(s[rb][nt][2 * half], s[rb][nt][2 * half + 1]));
          mx = quad_max(mx);
          const float m_new = fmaxf(m[rb][half], mx);
          const float alpha = softmax_rescale(m[rb][half], m_new);
          const float shift = softmax_shift(m_new);
          float sum = 0.f;
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              // __expf: one MUFU.EX2; exp(-inf) = 0 for entries off the support
              const float pv = __expf(s[rb][nt][2 * half + c] - shift);
              s[rb][nt][2 * half + c] = pv;
              sum += pv;
            }
          l[rb][half] = l[rb][half] * alpha + sum;  // this lane's share; reduced at the end
          m[rb][half] = m_new;
#pragma unroll
          for (int d = 0; d < kDT; ++d) {
            o[rb][d][2 * half] *= alpha;
            o[rb][d][2 * half + 1] *= alpha;
          }
        }
      } else {
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            // weight l w on the support (a logit of -inf by itself included), 0 off it
            const float x = s[rb][nt][e];
            const int64_t j = j0 + nt * 8 + acc_col(lane, e);
            const bool off = (kMlp || finish) && code[nt][e] < 0;
            s[rb][nt][e] = off ? 0.f : (kscale != nullptr ? x * kscale[j] : x);
          }
      }
    }

#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk) {
      uint32_t a[kRB][4];
#pragma unroll
      for (int rb = 0; rb < kRB; ++rb) frag_a_from_acc<T>(a[rb], s[rb][2 * kk], s[rb][2 * kk + 1]);
#pragma unroll
      for (int np = 0; np < kD / 16; ++np) {
        if (np * 16 >= Dv) break;
        uint32_t bb[4];
        frag_b_kn(bb, v_s, kLd, kk * 16, np * 16, lane);
#pragma unroll
        for (int rb = 0; rb < kRB; ++rb) {
          mma_16816<T>(o[rb][2 * np], a[rb], bb[0], bb[1]);
          mma_16816<T>(o[rb][2 * np + 1], a[rb], bb[2], bb[3]);
        }
      }
    }
    cp_async_wait_all();
    // two stages: K_{j+1} in place; both: every warp is done with V_j and t_j
    __syncthreads();
  }

  T* out = static_cast<T*>(p.out);
  float* lse = static_cast<float*>(p.lse);
#pragma unroll
  for (int rb = 0; rb < kRB; ++rb)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t i = i0 + row0(rb) + (lane >> 2) + 8 * half;
      float inv = 1.f;
      float row_lse = 0.f;
      if (p.softmax) {
        const float lsum = quad_sum(l[rb][half]);
        inv = softmax_inv_sum(lsum);
        row_lse = softmax_lse(m[rb][half], lsum);
      }
      if (i >= p.N) continue;
#pragma unroll
      for (int d = 0; d < kDT; ++d) {
        const int col = d * 8 + 2 * (lane & 3);
        if (col < Dv) {
          *reinterpret_cast<uint32_t*>(out + (bh * p.N + i) * Dv + col) =
              Elem<T>::pack(o[rb][d][2 * half] * inv, o[rb][d][2 * half + 1] * inv);
        }
      }
      if (p.softmax && (lane & 3) == 0) lse[bh * p.N + i] = row_lse;
    }
#endif
}

template <class T, class Cfg, bool kMlp, Activation A>
void launch_fwd_kernel(const FwdParams& p, cudaStream_t stream) {
  const Smem L = make_smem(Cfg::kTileBytes, Cfg::kBr, Cfg::kBc, p);
  auto kernel = &fwd_kernel<T, Cfg, kMlp, A>;
  if (L.bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(L.bytes)));
  }
  const dim3 grid(static_cast<unsigned>((p.N + Cfg::kBr - 1) / Cfg::kBr),
                  static_cast<unsigned>(p.H), static_cast<unsigned>(p.B));
  ITNET_LAUNCH(grid, Cfg::kThreads, L.bytes, stream, kernel)(p, L);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The default instances (fwd_<dtype>_d<kD>.cu): every activation.
template <class T, int kD>
void launch_fwd(const FwdParams& p, cudaStream_t stream) {
  if (!p.mlp) return launch_fwd_kernel<T, FwdTiles<kD, false>, false, Activation::Relu>(p, stream);
  ITNET_DISPATCH_ACTIVATION(p.activation, A,
                            launch_fwd_kernel<T, FwdTiles<kD, true>, true, A>(p, stream));
}

// A sweep instance (sweep/): attention only, or the pair MLP with the default
// activation (the sweep times configurations, not activations; sweep.h).
template <class T, class Cfg>
void launch_fwd_sweep(const FwdParams& p, cudaStream_t stream) {
  if (!p.mlp) return launch_fwd_kernel<T, Cfg, false, Activation::Relu>(p, stream);
  check_sweep_activation(p.activation);
  launch_fwd_kernel<T, Cfg, true, kSweepActivation>(p, stream);
}

template <class T, class Cfg>
bool register_fwd_sweep(const char* name, Dtype dt) {
  add_fwd_sweep(FwdSweep{name, Cfg::kD, dt, &launch_fwd_sweep<T, Cfg>, &fwd_bytes_cfg<Cfg>});
  return true;
}

}  // namespace flash
}  // namespace dense
}  // namespace itnet

// A forward sweep instance for head dims 64 and 128: BR x BC tiles, WARPS
// warps, STAGES load stages, PACKED MLP math; its name says the same.
#define ITNET_FLASH_SWEEP_FWD(T, DT, BR, BC, WARPS, STAGES, PACKED, NAME)              \
  namespace itnet {                                                                    \
  namespace dense {                                                                    \
  namespace flash {                                                                    \
  namespace {                                                                          \
  static_assert(BR % (16 * WARPS) == 0, "sweep: BR must be a multiple of 16 x WARPS"); \
  template <int kD>                                                                    \
  using SweepCfg = FwdCfg<kD, WARPS, BR / (16 * WARPS), BC, STAGES, PACKED>;           \
  [[maybe_unused]] const bool registered =                                             \
      register_fwd_sweep<T, SweepCfg<64>>(NAME, Dtype::DT) &&                          \
      register_fwd_sweep<T, SweepCfg<128>>(NAME, Dtype::DT);                           \
  }                                                                                    \
  }                                                                                    \
  }                                                                                    \
  }
