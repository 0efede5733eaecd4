// CUDA forward of the decay scan (see cuda_kernel.h for the design and the
// layouts): one block per (b, d), chunks of kThreads x kItems steps, one
// cub::BlockScan of the step maps per state r and chunk, the state carried
// across chunks by the scan's prefix callback.
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
struct FwdTraits {
  using A = Acc<T>;
  using Pair = Affine<A>;
  using BlockScan = cub::BlockScan<Pair, kThreads, cub::BLOCK_SCAN_WARP_SCANS>;
  static constexpr int64_t kChunk = int64_t(kThreads) * kItems;
  // dynamic: the carried state of every r
  static int64_t dynamic_smem(int64_t Rk) { return Rk * int64_t(sizeof(A)); }
  static constexpr int64_t kStaticSmem = 2 * int64_t(sizeof(typename BlockScan::TempStorage));
  // float: 512 threads per SM, i.e. at most 128 registers (ptxas would take
  // up to 200 and halve the occupancy; the cap costs a few bytes of spills)
  static constexpr int kMinBlocks = sizeof(A) == 4 ? 512 / kThreads : 1;
};

template <class T, int kThreads, int kItems, CudaDecayMode kMode>
__global__ void __launch_bounds__(kThreads, FwdTraits<T, kThreads, kItems>::kMinBlocks)
    scan_fwd_kernel(const ScanParams p, const CudaScanExtra ex) {
  using Tr = FwdTraits<T, kThreads, kItems>;
  using A = typename Tr::A;
  using Pair = typename Tr::Pair;
  // two scan buffers used in turn: consecutive scans need no extra barrier
  // (a buffer is reused only after a whole scan, whose barriers every thread
  // passes after it finished reading the buffer's previous contents)
  ITNET_SHARED(typename Tr::BlockScan::TempStorage, scan_tmp, [2]);
  ITNET_DYNAMIC_SHARED(unsigned char, smem);
  A* carry = reinterpret_cast<A*>(smem);  // [Rk]; thread 0 only once initialized

  const int tid = static_cast<int>(threadIdx.x);
  const int64_t bd = blockIdx.x;
  const int64_t D = p.D, Rk = p.Rk, T_ = p.T;
  const int64_t b = bd / D, d = bd % D, g = d / p.group_size;
  constexpr bool factored = kMode == CudaDecayMode::Factored;

  const T* x = cptr<T>(p.x) + b * p.x_s.b + d * p.x_s.c;
  const T* psi = cptr<T>(p.psi) + b * p.psi_s.b + g * p.psi_s.g;
  const T* phi = p.y ? cptr<T>(p.phi) + b * p.phi_s.b + g * p.phi_s.g : nullptr;
  const T* ld = factored ? nullptr : cptr<T>(p.log_decay) + b * p.ld_sb + d * p.ld_sd;
  const T* dt = factored ? cptr<T>(p.dt) + b * p.dt_s.b + d * p.dt_s.c : nullptr;
  const T* A_row = factored ? cptr<T>(p.A) + d * p.A_sd : nullptr;
  T* y = p.y ? mptr<T>(p.y) + b * p.y_s.b + d * p.y_s.c : nullptr;
  T* h_last = p.h_last ? mptr<T>(p.h_last) + bd * Rk : nullptr;
  A* ckpt = ex.ckpt ? mptr<A>(ex.ckpt) + bd * ex.n_ckpt * Rk : nullptr;
  const A skip = p.skip ? to_acc(cptr<T>(p.skip)[d]) : A(0);

  {
    const T* h0 = p.h0 ? cptr<T>(p.h0) + bd * Rk : nullptr;
    for (int64_t r = tid; r < Rk; r += kThreads) carry[r] = h0 ? to_acc(h0[r]) : A(0);
  }
  __syncthreads();

  int buf = 0;
  const int64_t n_chunks = (T_ + Tr::kChunk - 1) / Tr::kChunk;
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int64_t t0 = c * Tr::kChunk + int64_t(tid) * kItems;
    const bool active = t0 < T_;
    const int nvalid = active ? static_cast<int>(T_ - t0 < kItems ? T_ - t0 : kItems) : 0;
    A xv[kItems], pre[kItems], yv[kItems];
    load_steps(x + t0, active, nvalid, xv);
    chunk_decay<kMode>(dt, ld, t0, active, nvalid, pre);
#pragma unroll
    for (int i = 0; i < kItems; ++i) yv[i] = A(0);

    for (int64_t r = 0; r < Rk; ++r) {
      A e[kItems], ps[kItems], ph[kItems];
      load_steps(psi + r * p.psi_s.r + t0, active, nvalid, ps);
      step_decays<kMode>(ld, p.ld_sr, A_row, p.A_sr, r, t0, active, nvalid, pre, e);
      if (y) load_steps(phi + r * p.phi_s.r + t0, active, nvalid, ph);

      Pair agg = identity_map<A>();
#pragma unroll
      for (int i = 0; i < kItems; ++i) agg = then(agg, step_map(e[i], ps[i], xv[i]));
      CarryPrefix<A> prefix{tid == 0 ? carry[r] : A(0)};
      Pair excl;  // the steps before this thread's first one (from the carried state)
      typename Tr::BlockScan(scan_tmp[buf]).ExclusiveScan(agg, excl, ThenOp(), prefix);
      buf ^= 1;
      if (tid == 0) {
        carry[r] = prefix.carry;  // the state after this chunk
        if (h_last && c == n_chunks - 1) h_last[r] = from_acc<T>(prefix.carry);
      }
      // excl.b: the state before step t0
      if (ckpt && active && t0 % ex.ckpt_every == 0) ckpt[(t0 / ex.ckpt_every) * Rk + r] = excl.b;
      if (y) {
        A h = excl.b;
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
          h = advance(e[i], h, ps[i], xv[i]);
          yv[i] += ph[i] * h;
        }
      }
    }
    if (y && active) {
#pragma unroll
      for (int i = 0; i < kItems; ++i) yv[i] += skip * xv[i];
      store_items(y + t0, yv);
    }
  }
}

// The forward as cuda_common.cuh's host side sees it.
struct FwdPass {
  using Params = ScanParams;
  template <class T, int kThreads, int kItems>
  using Traits = FwdTraits<T, kThreads, kItems>;
  template <class T, int kThreads, int kItems, CudaDecayMode kMode>
  static auto kernel() {
    return &scan_fwd_kernel<T, kThreads, kItems, kMode>;
  }
  static CudaScanConfig config(int64_t T) { return cuda_scan_fwd_config(T); }
  static constexpr int kLongItems = 16;
};

}  // namespace
}  // namespace cuda

int64_t cuda_scan_fwd_smem(int64_t T, int64_t Rk, CudaDtype dtype) {
  return cuda::pass_smem<cuda::FwdPass>(T, Rk, dtype);
}

cudaError_t cuda_scan_fwd(const ScanParams& p, const CudaScanExtra& ex, CudaDtype dtype,
                          cudaStream_t stream) {
  return cuda::run_pass<cuda::FwdPass>(p, ex, dtype, stream);
}

}  // namespace scan
}  // namespace itnet
