// CUDA backward of the decay scan (see cuda_kernel.h for the design and the
// layouts). One block per (b, d) walks its chunks from the last; per chunk
// and state r:
//   1. the states h_{t-1} of the thread's steps: a forward block scan of the
//      step maps from the chunk's checkpoint (the state before the chunk,
//      written by a checkpoint launch of the forward kernel, or h0 for the
//      first chunk);
//   2. the adjoint carries: a block scan of the adjoint maps in reversed
//      thread order (thread aggregates exchanged through shared memory), the
//      prefix callback carrying dLoss/dh from the later chunks (dh_last at
//      the start);
//   3. per step, backwards through the thread's steps: g_t = state_grad(..),
//      and the gradients: dx (summed over r in registers), dphi = dy h_t and
//      dpsi = g x (staged in shared memory, then written time-striped: plain
//      stores, or float atomics when several channels share a group),
//      da = log_decay_grad(g, e, h_{t-1}) into dld / ddt / dA by mode.
// Sums over time (dA, time-constant log-decays, dskip) are reduced per warp
// in a fixed order and written once per (b, d): no atomics.
#include <cub/block/block_scan.cuh>
#include <cuda_runtime.h>

#include "scan/cuda_common.cuh"
#include "scan/cuda_kernel.h"
#include "common/cuda_launch.h"

namespace itnet {
namespace scan {
namespace cuda {
namespace {

template <class T, int kThreads, int kItems>
struct BwdTraits {
  using A = Acc<T>;
  using Pair = Affine<A>;
  using BlockScan = cub::BlockScan<Pair, kThreads, cub::BLOCK_SCAN_WARP_SCANS>;
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kChunk = kThreads * kItems;
  // staging rows of dphi / dpsi, one padding slot per 32 so that the
  // blocked writes (stride kItems) and the striped reads are conflict-free
  static constexpr int kStage = kChunk + kChunk / 32;
  static __device__ __forceinline__ int stage(int i) { return i + (i >> 5); }

  struct Smem {
    typename BlockScan::TempStorage scan[2];
    Pair xch[kThreads];  // thread aggregates / results of the reversed scan
    A dphi[kStage], dpsi[kStage];
    A warp_part[kWarps];
  };
  static constexpr int64_t kStaticSmem = int64_t(sizeof(Smem));
  // dynamic: chunk-start states hs[Rk], adjoint carries gc[Rk], per-warp time sums red[kWarps][Rk]
  static int64_t dynamic_smem(int64_t Rk) { return (2 + kWarps) * Rk * int64_t(sizeof(A)); }
  // float: 512 threads per SM, i.e. at most 128 registers (ptxas would take
  // up to 200 and halve the occupancy; the cap costs a few bytes of spills)
  static constexpr int kMinBlocks = sizeof(A) == 4 ? 512 / kThreads : 1;
};

template <class T, int kThreads, int kItems, CudaDecayMode kMode>
__global__ void __launch_bounds__(kThreads, BwdTraits<T, kThreads, kItems>::kMinBlocks)
    scan_bwd_kernel(const ScanBwdParams p, const CudaScanExtra ex) {
  using Tr = BwdTraits<T, kThreads, kItems>;
  using A = typename Tr::A;
  using Pair = typename Tr::Pair;
  constexpr bool factored = kMode == CudaDecayMode::Factored;
  // per-r sums over time: dA (Factored), dld (PerState)
  constexpr bool time_sums = factored || kMode == CudaDecayMode::PerState;
  ITNET_SHARED(typename Tr::Smem, sm);
  ITNET_DYNAMIC_SHARED(unsigned char, smem);
  const int64_t Rk = p.Rk;
  A* hs = reinterpret_cast<A*>(smem);  // [Rk] state before the current chunk
  A* gc = hs + Rk;                     // [Rk] adjoint carry; thread 0 only once initialized
  A* red = gc + Rk;                    // [kWarps][Rk], row w written by lane 0 of warp w only

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const int64_t bd = blockIdx.x;
  const int64_t D = p.D, T_ = p.T;
  const int64_t b = bd / D, d = bd % D, g = d / p.group_size;

  const T* x = cptr<T>(p.x) + b * p.x_s.b + d * p.x_s.c;
  const T* dy = cptr<T>(p.dy) + b * p.dy_s.b + d * p.dy_s.c;
  const T* psi = cptr<T>(p.psi) + b * p.psi_s.b + g * p.psi_s.g;
  const T* phi = cptr<T>(p.phi) + b * p.phi_s.b + g * p.phi_s.g;
  const T* ld = factored ? nullptr : cptr<T>(p.log_decay) + b * p.ld_sb + d * p.ld_sd;
  const T* dt = factored ? cptr<T>(p.dt) + b * p.dt_s.b + d * p.dt_s.c : nullptr;
  const T* A_row = factored ? cptr<T>(p.A) + d * p.A_sd : nullptr;
  const A* ckpt = ex.ckpt ? cptr<A>(ex.ckpt) + bd * ex.n_ckpt * Rk : nullptr;
  T* dx = mptr<T>(p.dx) + b * p.dx_s.b + d * p.dx_s.c;
  T* ddt = factored ? mptr<T>(p.ddt) + b * ex.ddt_sb + d * ex.ddt_sd : nullptr;
  A* dld = factored ? nullptr : mptr<A>(p.dld) + b * ex.dld_sb + d * ex.dld_sd;
  // this channel's dphi / dpsi rows: its own part, or the group's shared one
  const int64_t part = p.n_parts == 1 ? 0 : d % p.group_size;
  const int64_t pp_off = part * ex.dpp_spart + b * ex.dpp_sb + g * ex.dpp_sg;
  A* dphi = mptr<A>(p.dphi) + pp_off;
  A* dpsi = mptr<A>(p.dpsi) + pp_off;
  const bool atomic = p.n_parts == 1 && p.group_size > 1;
  const A skip = p.skip ? to_acc(cptr<T>(p.skip)[d]) : A(0);

  {
    const T* dh_last = p.dh_last ? cptr<T>(p.dh_last) + bd * Rk : nullptr;
    for (int64_t r = tid; r < Rk; r += kThreads) {
      gc[r] = dh_last ? to_acc(dh_last[r]) : A(0);
      if (time_sums) {
        for (int w = 0; w < Tr::kWarps; ++w) red[w * Rk + r] = A(0);
      }
    }
  }
  A skip_sum = A(0);  // sum over the thread's steps of dy x (dskip)

  int buf = 0;
  const int64_t n_chunks = (T_ + Tr::kChunk - 1) / Tr::kChunk;
  for (int64_t c = n_chunks - 1; c >= 0; --c) {
    __syncthreads();  // the previous chunk's reads of hs are done (and the init above)
    {
      const T* h0 = p.h0 ? cptr<T>(p.h0) + bd * Rk : nullptr;
      for (int64_t r = tid; r < Rk; r += kThreads)
        hs[r] = c > 0 ? ckpt[c * Rk + r] : (h0 ? to_acc(h0[r]) : A(0));
    }
    __syncthreads();

    const int64_t t0 = c * Tr::kChunk + int64_t(tid) * kItems;
    const bool active = t0 < T_;
    const int nvalid = active ? static_cast<int>(T_ - t0 < kItems ? T_ - t0 : kItems) : 0;
    A xv[kItems], dyv[kItems], pre[kItems], dxa[kItems], dd[kItems];
    load_steps(x + t0, active, nvalid, xv);
    load_steps(dy + t0, active, nvalid, dyv);
    chunk_decay<kMode>(dt, ld, t0, active, nvalid, pre);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      dxa[i] = A(0);
      dd[i] = A(0);
    }

    for (int64_t r = 0; r < Rk; ++r) {
      A e[kItems], ps[kItems], ph[kItems], hp[kItems];
      load_steps(psi + r * p.psi_s.r + t0, active, nvalid, ps);
      load_steps(phi + r * p.phi_s.r + t0, active, nvalid, ph);
      step_decays<kMode>(ld, p.ld_sr, A_row, p.A_sr, r, t0, active, nvalid, pre, e);

      // 1. h_{t-1} of the thread's steps
      {
        Pair agg = identity_map<A>();
#pragma unroll
        for (int i = 0; i < kItems; ++i) agg = then(agg, step_map(e[i], ps[i], xv[i]));
        CarryPrefix<A> prefix{tid == 0 ? hs[r] : A(0)};
        Pair excl;
        typename Tr::BlockScan(sm.scan[buf]).ExclusiveScan(agg, excl, ThenOp(), prefix);
        buf ^= 1;
        A h = excl.b;
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
          hp[i] = h;
          h = advance(e[i], h, ps[i], xv[i]);
        }
      }

      // 2. the carry reaching the thread's last step from the later steps
      A carry;
      {
        Pair agg = identity_map<A>();  // later steps first
#pragma unroll
        for (int i = kItems - 1; i >= 0; --i) agg = then(agg, adjoint_map(e[i], ph[i], dyv[i]));
        sm.xch[tid] = agg;
        __syncthreads();
        const Pair in = sm.xch[kThreads - 1 - tid];  // logical position tid = reversed time
        CarryPrefix<A> prefix{tid == 0 ? gc[r] : A(0)};
        Pair excl;
        typename Tr::BlockScan(sm.scan[buf]).ExclusiveScan(in, excl, ThenOp(), prefix);
        buf ^= 1;
        if (tid == 0) gc[r] = prefix.carry;  // dLoss/dh before this chunk
        // every read of xch above precedes the scan's barriers
        sm.xch[kThreads - 1 - tid] = excl;
        __syncthreads();
        carry = sm.xch[tid].b;
      }

      // 3. gradients, backwards through the thread's steps
      A wsum = A(0);  // this thread's part of a per-r sum over time
      const A a_r = factored ? to_acc(A_row[r * p.A_sr]) : A(0);
#pragma unroll
      for (int i = kItems - 1; i >= 0; --i) {
        const A gr = state_grad(carry, ph[i], dyv[i]);
        const A h = advance(e[i], hp[i], ps[i], xv[i]);
        dxa[i] += gr * ps[i];
        const int s = Tr::stage(tid * kItems + i);
        sm.dpsi[s] = gr * xv[i];
        sm.dphi[s] = dyv[i] * h;
        const A da = i < nvalid ? log_decay_grad(gr, e[i], hp[i]) : A(0);
        if constexpr (factored) {
          dd[i] += da * a_r;
          wsum += da * pre[i];
        } else if constexpr (kMode == CudaDecayMode::PerStep) {
          dd[i] += da;
        } else if constexpr (kMode == CudaDecayMode::PerState) {
          wsum += da;
        } else {
          dd[i] = da;
        }
        carry = carry_back(gr, e[i]);
      }
      if constexpr (kMode == CudaDecayMode::Full) {
        if (active) store_items(dld + r * ex.dld_sr + t0, dd);
      }
      if constexpr (time_sums) {
        wsum = warp_sum(wsum);
        if (lane == 0) red[warp * Rk + r] += wsum;
      }
      __syncthreads();  // staging rows complete
      // time-striped: consecutive threads, consecutive steps. The next writes
      // to the staging rows follow the next r's scans (barriers).
      A* dphi_r = dphi + r * ex.dpp_sr;
      A* dpsi_r = dpsi + r * ex.dpp_sr;
#pragma unroll
      for (int j = 0; j < kItems; ++j) {
        const int pos = j * kThreads + tid;
        const int64_t t = c * Tr::kChunk + pos;
        if (t < T_) {
          const int s = Tr::stage(pos);
          if (atomic) {
            atomicAdd(dphi_r + t, sm.dphi[s]);
            atomicAdd(dpsi_r + t, sm.dpsi[s]);
          } else {
            dphi_r[t] = sm.dphi[s];
            dpsi_r[t] = sm.dpsi[s];
          }
        }
      }
    }

    if (active) {
#pragma unroll
      for (int i = 0; i < kItems; ++i) dxa[i] += skip * dyv[i];
      store_items(dx + t0, dxa);
      if constexpr (factored) store_items(ddt + t0, dd);
      if constexpr (kMode == CudaDecayMode::PerStep) store_items(dld + t0, dd);
    }
#pragma unroll
    for (int i = 0; i < kItems; ++i) skip_sum += dyv[i] * xv[i];  // 0 past T
  }

  // per-(b, d) results
  if (p.skip) {
    skip_sum = warp_sum(skip_sum);
    if (lane == 0) sm.warp_part[warp] = skip_sum;
  }
  __syncthreads();  // gc, red and warp_part complete
  if (p.dh0) {
    T* dh0 = mptr<T>(p.dh0) + bd * Rk;
    for (int64_t r = tid; r < Rk; r += kThreads) dh0[r] = from_acc<T>(gc[r]);
  }
  if constexpr (time_sums) {
    A* out = factored ? mptr<A>(p.dA) + bd * Rk : dld;
    if (factored || ex.dld_sr != 0) {  // one sum per r
      for (int64_t r = tid; r < Rk; r += kThreads) {
        A s = A(0);
        for (int w = 0; w < Tr::kWarps; ++w) s += red[w * Rk + r];
        out[r * (factored ? 1 : ex.dld_sr)] = s;
      }
    } else if (tid == 0) {  // log-decay broadcast over r too: one sum
      A s = A(0);
      for (int64_t r = 0; r < Rk; ++r) {
        for (int w = 0; w < Tr::kWarps; ++w) s += red[w * Rk + r];
      }
      out[0] = s;
    }
  }
  if (p.skip && tid == 0) {
    A s = A(0);
    for (int w = 0; w < Tr::kWarps; ++w) s += sm.warp_part[w];
    mptr<A>(p.dskip)[bd] = s;
  }
}

// The backward as cuda_common.cuh's host side sees it.
struct BwdPass {
  using Params = ScanBwdParams;
  template <class T, int kThreads, int kItems>
  using Traits = BwdTraits<T, kThreads, kItems>;
  template <class T, int kThreads, int kItems, CudaDecayMode kMode>
  static auto kernel() {
    return &scan_bwd_kernel<T, kThreads, kItems, kMode>;
  }
  static CudaScanConfig config(int64_t T) { return cuda_scan_bwd_config(T); }
  static constexpr int kLongItems = 8;
};

}  // namespace
}  // namespace cuda

int64_t cuda_scan_bwd_smem(int64_t T, int64_t Rk, CudaDtype dtype) {
  return cuda::pass_smem<cuda::BwdPass>(T, Rk, dtype);
}

cudaError_t cuda_scan_bwd(const ScanBwdParams& p, const CudaScanExtra& ex, CudaDtype dtype,
                          cudaStream_t stream) {
  return cuda::run_pass<cuda::BwdPass>(p, ex, dtype, stream);
}

}  // namespace scan
}  // namespace itnet
