// CUDA backward of the dense integral transform: the simple exact kernels.
//
// The logits are recomputed pair by pair (pair_logit), as in the forward, and
// turned into the logit gradient
//   softmax: P = exp(l - lse), dS = P (dO_i . v_j - delta_i), delta = rowsum(dO O) - grad_lse
//   none:    a = l w,          dS = w (dO_i . v_j)
// (off-support pairs: dS = 0). Two kernels share that code:
//
//  - query side, one warp per query row (b, h, i), 32 keys per step:
//      dq_i  += scale sum_j dS k_j              (row owned by the warp)
//      du_i  += sum_j dpre_ij                    (R accumulators in shared memory,
//                                                 atomically added across heads)
//      dW2_h += sum dS act(pre), db2_h += sum dS (per-warp accumulators, one
//                                                 atomic add per warp at the end)
//      dE[o(i,j)] += dpre_ij                     (atomic, per pair)
//    with dpre_ijr = dS_ij W2[h,r] act'(pre_ijr).
//  - key side, one warp per key row (b, h, j), 32 queries per step:
//      dk_j += scale sum_i dS q_i,  dv_j += sum_i a_ij dO_i   (rows owned)
//      dt_j += sum_i dpre_ij        (shared-memory accumulators, atomic across heads)
//      dkw_j += sum_{h,i} dS (softmax: d/d log w) or dO_i.v_j l (none: d/dw)
//
// Lanes split the pairs of a step when evaluating logits, and the columns
// (d or r, lane x owning x mod 32) when accumulating, exchanging the 32 pair
// values through a per-warp slice of shared memory.
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <climits>

#include "common/dispatch.h"
#include "common/pair_grad.h"
#include "dense/cuda_kernel.h"
#include "dense/cuda_pair.cuh"
#include "common/cuda_launch.h"

namespace itnet {
namespace dense {
namespace cuda {
namespace {

constexpr int kBwdWarps = 4;           // most warps per block
constexpr int64_t kRowsPerBlock = 32;  // query (or key) rows per block
constexpr int64_t kSmemLimit = 48 * 1024;

struct Launch {
  int warps;
  WarpSmem smem;
  int64_t blocks;
  int64_t ntiles;
};

// dS of one pair (and the contribution to the key-weight gradient, and the
// weight a the value row gets), common/pair_grad.h. Off the support (on =
// false, pair_logit): all 0.
template <class T>
__device__ __forceinline__ PairGrad<T> pair_grad(const BwdParams& bp, T s, bool on,
                                                 const T* dOi, const T* vj, int64_t row, T w) {
  if (!on) return PairGrad<T>{T(0), T(0), T(0)};
  const FwdParams& p = bp.f;
  const T dp = dot(dOi, vj, p.Dv);
  if (!p.softmax) return itnet::pair_grad(false, s, w, dp, T(0), T(0));
  return itnet::pair_grad(true, s, w, dp, softmax_bwd_shift(cptr<T>(bp.lse)[row]),
                          cptr<T>(bp.delta)[row]);
}

// ---------------------------------------------------------------------------
// Query side: block = (b, h, tile of kRowsPerBlock queries), warps stride rows.

template <class T, Activation A>
__global__ void __launch_bounds__(kBwdWarps* kWarp)
    dense_bwd_q_kernel(const BwdParams bp, const WarpSmem layout, const int64_t ntiles) {
  ITNET_DYNAMIC_SHARED(unsigned char, smem);
  const FwdParams& p = bp.f;
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int nwarps = static_cast<int>(blockDim.x) / kWarp;
  const int64_t tile = blockIdx.x % ntiles;
  const int64_t bh = blockIdx.x / ntiles;
  const int64_t h = bh % p.H;
  const int64_t b = bh / p.H;
  const int64_t R = p.R, Dk = p.Dk, Dv = p.Dv;

  unsigned char* base = smem + warp * layout.bytes_per_warp;
  int64_t* s_erow = reinterpret_cast<int64_t*>(base);
  T* s_ds = reinterpret_cast<T*>(base + layout.off_vec);
  T* du_acc = reinterpret_cast<T*>(base + layout.off_acc);  // R, when the MLP term is on
  T* dw_acc = du_acc + R;                                   // R

  const bool mlp = p.mlp;
  T* du = static_cast<T*>(bp.du);
  T* dE = static_cast<T*>(bp.dE);
  const T* W2 = mlp ? cptr<T>(p.W2) + h * R : nullptr;
  const T* kscale = p.key_scale ? cptr<T>(p.key_scale) + b * p.M : nullptr;
  const T* vbh = cptr<T>(p.v) + bh * p.M * Dv;
  const T* kbh = p.q ? cptr<T>(p.k) + bh * p.M * Dk : nullptr;
  const T scale = static_cast<T>(p.scale);

  if (mlp)
    for (int64_t r = lane; r < R; r += kWarp) dw_acc[r] = T(0);
  T db2_acc = T(0);  // this lane's share of sum dS

  const int64_t i_end = (tile + 1) * kRowsPerBlock < p.N ? (tile + 1) * kRowsPerBlock : p.N;
  for (int64_t i = tile * kRowsPerBlock + warp; i < i_end; i += nwarps) {
    const int64_t row = bh * p.N + i;
    const T* dOi = cptr<T>(bp.dout) + row * Dv;
    const int64_t jend = p.causal ? (i + 1 < p.M ? i + 1 : p.M) : p.M;
    if (mlp && du)
      for (int64_t r = lane; r < R; r += kWarp) du_acc[r] = T(0);

    for (int64_t j0 = 0; j0 < jend; j0 += kWarp) {
      const int64_t j = j0 + lane;
      int64_t erow = 0;
      T ds = T(0);
      if (j < jend) {
        bool on = false;
        const T s = pair_logit<T, A>(p, b, h, i, j, erow, on);
        ds = pair_grad(bp, s, on, dOi, vbh + j * Dv, row, kscale ? kscale[j] : T(1)).ds;
      }
      if (!__any_sync(kFullMask, ds != T(0))) continue;
      db2_acc += ds;
      __syncwarp();  // previous step's values fully read
      s_ds[lane] = ds;
      s_erow[lane] = erow;
      __syncwarp();
      const int cnt = static_cast<int>(jend - j0 < kWarp ? jend - j0 : kWarp);

      if (kbh) {  // dq_i += scale sum_j dS k_j
        T* dq = static_cast<T*>(bp.dq) + row * Dk;
        for (int64_t d = lane; d < Dk; d += kWarp) {
          T acc = T(0);
          for (int jj = 0; jj < cnt; ++jj) {
            const T dsj = s_ds[jj];
            if (dsj != T(0)) acc += dsj * kbh[(j0 + jj) * Dk + d];
          }
          dq[d] += scale * acc;
        }
      }
      if (mlp) {
        const T* ui = p.u ? cptr<T>(p.u) + (b * p.N + i) * R : nullptr;
        for (int64_t r = lane; r < R; r += kWarp) {
          const T w2r = W2[r];
          T adu = T(0), adw = T(0);
          for (int jj = 0; jj < cnt; ++jj) {
            const T dsj = s_ds[jj];
            if (dsj == T(0)) continue;
            const int64_t jk = j0 + jj;
            const T* tj = p.t ? cptr<T>(p.t) + (b * p.M + jk) * R : nullptr;
            const T* er = p.E ? cptr<T>(p.E) + s_erow[jj] * R : nullptr;
            T dact;
            const T hid = Act<A, T>::fwd_grad(pair_preact(ui, tj, er, r), dact);
            const T dpre = dsj * w2r * dact;
            adu += dpre;
            adw += dsj * hid;
            if (dE) atomic_add(dE + s_erow[jj] * R + r, dpre);
          }
          if (du) du_acc[r] += adu;
          dw_acc[r] += adw;
        }
      }
    }
    if (mlp && du)
      for (int64_t r = lane; r < R; r += kWarp) atomic_add(du + (b * p.N + i) * R + r, du_acc[r]);
  }

  if (mlp) {
    T* dW2 = static_cast<T*>(bp.dW2) + h * R;
    for (int64_t r = lane; r < R; r += kWarp)
      if (dw_acc[r] != T(0)) atomic_add(dW2 + r, dw_acc[r]);
    if (bp.db2) {
      const T tot = warp_sum(db2_acc);
      if (lane == 0 && tot != T(0)) atomic_add(static_cast<T*>(bp.db2) + h, tot);
    }
  }
}

// ---------------------------------------------------------------------------
// Key side: block = (b, h, tile of kRowsPerBlock keys), warps stride keys.

template <class T, Activation A>
__global__ void __launch_bounds__(kBwdWarps* kWarp)
    dense_bwd_k_kernel(const BwdParams bp, const WarpSmem layout, const int64_t ntiles) {
  ITNET_DYNAMIC_SHARED(unsigned char, smem);
  const FwdParams& p = bp.f;
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int nwarps = static_cast<int>(blockDim.x) / kWarp;
  const int64_t tile = blockIdx.x % ntiles;
  const int64_t bh = blockIdx.x / ntiles;
  const int64_t h = bh % p.H;
  const int64_t b = bh / p.H;
  const int64_t R = p.R, Dk = p.Dk, Dv = p.Dv, N = p.N;

  unsigned char* base = smem + warp * layout.bytes_per_warp;
  int64_t* s_erow = reinterpret_cast<int64_t*>(base);
  T* s_ds = reinterpret_cast<T*>(base + layout.off_vec);
  T* s_a = s_ds + kWarp;
  T* dt_acc = reinterpret_cast<T*>(base + layout.off_acc);  // R, when dt is wanted

  T* dt = static_cast<T*>(bp.dt);
  const bool want_dt = p.mlp && dt != nullptr;
  const T* W2 = p.mlp ? cptr<T>(p.W2) + h * R : nullptr;
  const T* dObh = cptr<T>(bp.dout) + bh * N * Dv;
  const T* qbh = p.q ? cptr<T>(p.q) + bh * N * Dk : nullptr;
  const T scale = static_cast<T>(p.scale);

  const int64_t j_end = (tile + 1) * kRowsPerBlock < p.M ? (tile + 1) * kRowsPerBlock : p.M;
  for (int64_t j = tile * kRowsPerBlock + warp; j < j_end; j += nwarps) {
    const T* vj = cptr<T>(p.v) + (bh * p.M + j) * Dv;
    const T w = p.key_scale ? cptr<T>(p.key_scale)[b * p.M + j] : T(1);
    T* dvj = static_cast<T*>(bp.dv) + (bh * p.M + j) * Dv;
    T* dkj = qbh ? static_cast<T*>(bp.dk) + (bh * p.M + j) * Dk : nullptr;
    const T* tj = p.t ? cptr<T>(p.t) + (b * p.M + j) * R : nullptr;
    if (want_dt)
      for (int64_t r = lane; r < R; r += kWarp) dt_acc[r] = T(0);
    T kw_acc = T(0);  // this lane's share of the key-weight gradient

    const int64_t i_start = p.causal ? j : 0;  // causal: only queries i >= j
    for (int64_t i0 = i_start; i0 < N; i0 += kWarp) {
      const int64_t i = i0 + lane;
      int64_t erow = 0;
      PairGrad<T> g{T(0), T(0), T(0)};
      if (i < N) {
        bool on = false;
        const T s = pair_logit<T, A>(p, b, h, i, j, erow, on);
        g = pair_grad(bp, s, on, dObh + i * Dv, vj, bh * N + i, w);
      }
      kw_acc += g.dw;
      if (!__any_sync(kFullMask, g.ds != T(0) || g.a != T(0))) continue;
      __syncwarp();  // previous step's values fully read
      s_ds[lane] = g.ds;
      s_a[lane] = g.a;
      s_erow[lane] = erow;
      __syncwarp();
      const int cnt = static_cast<int>(N - i0 < kWarp ? N - i0 : kWarp);

      for (int64_t d = lane; d < Dv; d += kWarp) {  // dv_j += sum_i a_ij dO_i
        T acc = T(0);
        for (int ii = 0; ii < cnt; ++ii) {
          const T ai = s_a[ii];
          if (ai != T(0)) acc += ai * dObh[(i0 + ii) * Dv + d];
        }
        dvj[d] += acc;
      }
      if (dkj) {  // dk_j += scale sum_i dS q_i
        for (int64_t d = lane; d < Dk; d += kWarp) {
          T acc = T(0);
          for (int ii = 0; ii < cnt; ++ii) {
            const T dsi = s_ds[ii];
            if (dsi != T(0)) acc += dsi * qbh[(i0 + ii) * Dk + d];
          }
          dkj[d] += scale * acc;
        }
      }
      if (want_dt) {  // dt_j += sum_i dS W2 act'(pre)
        for (int64_t r = lane; r < R; r += kWarp) {
          const T w2r = W2[r];
          T acc = T(0);
          for (int ii = 0; ii < cnt; ++ii) {
            const T dsi = s_ds[ii];
            if (dsi == T(0)) continue;
            const T* ui = p.u ? cptr<T>(p.u) + (b * N + i0 + ii) * R : nullptr;
            const T* er = p.E ? cptr<T>(p.E) + s_erow[ii] * R : nullptr;
            T dact;
            Act<A, T>::fwd_grad(pair_preact(ui, tj, er, r), dact);
            acc += dsi * w2r * dact;
          }
          dt_acc[r] += acc;
        }
      }
    }
    if (want_dt)
      for (int64_t r = lane; r < R; r += kWarp) atomic_add(dt + (b * p.M + j) * R + r, dt_acc[r]);
    if (bp.need_dkw) {
      const T tot = warp_sum(kw_acc);
      if (lane == 0) atomic_add(static_cast<T*>(bp.dkw) + b * p.M + j, tot);
    }
  }
}

// ---------------------------------------------------------------------------
// Launch configuration: as many warps per block (up to kBwdWarps) as the
// shared-memory accumulators allow.

Launch plan(const FwdParams& p, int64_t rows, int64_t elem_size, int nacc, const char* what) {
  Launch L;
  L.smem = WarpSmem::make(elem_size, p.R, nacc);
  TORCH_CHECK(L.smem.bytes_per_warp <= kSmemLimit, "dense_bwd (CUDA): R = ", p.R,
              " is too large for the ", what, " kernel, whose per-warp accumulators need ",
              L.smem.bytes_per_warp, " bytes of shared memory (at most ", kSmemLimit,
              "); at most R = ",
              (kSmemLimit - WarpSmem::make(elem_size, 0, nacc).bytes_per_warp) / (nacc * elem_size),
              " is supported for this dtype");
  L.warps = kBwdWarps;
  while (L.warps > 1 && L.warps * L.smem.bytes_per_warp > kSmemLimit) L.warps /= 2;
  L.ntiles = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  L.blocks = p.B * p.H * L.ntiles;
  TORCH_CHECK(L.blocks <= INT_MAX, "dense_bwd (CUDA): B * H * ceil(", rows, " / ", kRowsPerBlock,
              ") = ", L.blocks, " blocks is more than one launch supports");
  return L;
}

template <class T, Activation A>
void launch(const BwdParams& bp, cudaStream_t stream) {
  const FwdParams& p = bp.f;
  const int64_t es = static_cast<int64_t>(sizeof(T));
  {
    const Launch L = plan(p, p.N, es, p.mlp ? 2 : 0, "query-side");
    ITNET_LAUNCH(static_cast<unsigned>(L.blocks), L.warps * kWarp,
                 static_cast<size_t>(L.warps * L.smem.bytes_per_warp), stream,
                 dense_bwd_q_kernel<T, A>)(bp, L.smem, L.ntiles);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  {
    const Launch L = plan(p, p.M, es, (p.mlp && bp.dt) ? 1 : 0, "key-side");
    ITNET_LAUNCH(static_cast<unsigned>(L.blocks), L.warps * kWarp,
                 static_cast<size_t>(L.warps * L.smem.bytes_per_warp), stream,
                 dense_bwd_k_kernel<T, A>)(bp, L.smem, L.ntiles);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <class T>
void launch_act(const BwdParams& bp, cudaStream_t stream) {
  const int act = bp.f.mlp ? bp.f.activation : static_cast<int>(Activation::Relu);
  ITNET_DISPATCH_ACTIVATION(act, A, launch<T, A>(bp, stream));
}

}  // namespace
}  // namespace cuda

void cuda_dense_bwd(const BwdParams& bp, bool is_double, cudaStream_t stream) {
  const FwdParams& p = bp.f;
  if (p.B * p.H * p.N * p.M == 0) return;
  TORCH_CHECK(p.Dv == 0 || (bp.dout != nullptr && bp.dv != nullptr),
              "dense_bwd (CUDA): dout / dv missing");
  TORCH_CHECK(!p.softmax || (bp.lse != nullptr && bp.delta != nullptr),
              "dense_bwd (CUDA): lse / delta missing in softmax mode");
  TORCH_CHECK(!p.q || (bp.dq != nullptr && bp.dk != nullptr), "dense_bwd (CUDA): dq / dk missing");
  TORCH_CHECK(!p.mlp || p.R == 0 || bp.dW2 != nullptr, "dense_bwd (CUDA): dW2 missing");
  TORCH_CHECK(!p.mlp || p.b2 == nullptr || bp.db2 != nullptr, "dense_bwd (CUDA): db2 missing");
  TORCH_CHECK(!bp.need_dkw || bp.dkw != nullptr, "dense_bwd (CUDA): dkw missing");
  if (is_double) {
    cuda::launch_act<double>(bp, stream);
  } else {
    cuda::launch_act<float>(bp, stream);
  }
}

}  // namespace dense
}  // namespace itnet
