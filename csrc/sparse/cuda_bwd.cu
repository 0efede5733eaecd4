// CUDA backward of the sparse (pair-list) integral transform (design in
// cuda_kernel.h). For every pair that takes part, with its logit l_h
// recomputed as in the forward:
//   softmax: a = exp(l + lw - lse_i), dS = a (dO_i . v_j - delta_i), dlw = sum_h dS
//   none:    w = exp(lw), a = l w,     dS = w (dO_i . v_j),         dlw = sum_h l w dP
//   dq_i += scale dS k_j      dk_j += scale dS q_i      dv_j += a dO_i
//   dpre_r = act'(pre_r) sum_h dS_h W2[h, r]:  du_i += dpre, dt_j += dpre, dE[o] += dpre
//   dW2[h, r] += dS_h act(pre_r),  db2[h] += dS_h
//
// Row pass (one warp per query row, rows w, w + warps, ...): per chunk of up
// to 32 pairs (one per lane), the logits of HC heads at a time; per head the
// lanes' a / dS go through shared memory to the lanes-over-columns loops:
// dq_i (owned), and without the key pass dk_j / dv_j (atomicAdd). dlog_w of
// each entry is written by its lane. The MLP part then runs with the lanes
// over the hidden units r and a loop over the chunk's pairs: du_i (owned),
// dW2 / db2 (the warp's partial sums, plain read-modify-write), dt_j and
// dE[o] (atomicAdd; dE into the warp's partial sums in deterministic mode).
//
// Key pass (deterministic mode; one warp per key (b, j)): the key's pairs in
// the sorted order, one per lane, the same logits and gradients; dv_j, dk_j
// and dt_j are owned by the warp and summed in that fixed order.
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>

#include "common/dispatch.h"
#include "sparse/cuda_common.cuh"
#include "sparse/cuda_kernel.h"
#include "common/cuda_launch.h"

namespace itnet {
namespace sparse {
namespace cuda {
namespace {

// Row pass: warps per SM that the launch aims for (it walks the rows with a
// fixed number of warps, each with its own slice of the partial sums), and
// the most memory those slices may take.
constexpr int64_t kRowWarpsPerSM = 32;
constexpr int64_t kPartialBudget = int64_t(256) << 20;
// The row pass keeps more pointers live than the other kernels: at most 168
// registers per thread (3 blocks of 4 warps per SM) instead of 128.
constexpr int kRowMinBlocks = 3;

// ---------------------------------------------------------------------------
// Row pass

template <class T, Activation A>
__global__ void __launch_bounds__(kMaxWarps* kWarp, kRowMinBlocks)
    sparse_bwd_row_kernel(const SparseBwdParams bp, const CudaBwdExtra ex, const WarpLayout L,
                          const int64_t total_warps) {
  ITNET_DYNAMIC_SHARED(unsigned char, smem);
  constexpr int HC = HeadGroup<T>::value;
  const SparseParams& sp = bp.s;
  const KernelParams& p = sp.f;
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t nwarps = static_cast<int64_t>(blockDim.x) / kWarp;
  const int64_t gw = static_cast<int64_t>(blockIdx.x) * nwarps + warp;  // this warp's slice
  const int64_t N = p.N, M = p.M, H = p.H, Dk = p.Dk, Dv = p.Dv, R = p.R;
  const WarpSmem<T> s = WarpSmem<T>::at(smem + warp * L.bytes, L, H);
  const bool softmax = p.softmax, mlp = p.mlp;
  const T scale = static_cast<T>(p.scale);
  T* hid = mlp ? s.hid + lane : nullptr;  // the MLP backward reads the hidden values

  T* dW2p = ex.dW2_part ? static_cast<T*>(ex.dW2_part) + gw * H * R : nullptr;
  T* db2p = ex.db2_part ? static_cast<T*>(ex.db2_part) + gw * H : nullptr;
  T* dEp = ex.dE_part ? static_cast<T*>(ex.dE_part) + gw * p.O * R : nullptr;
  T* dE = static_cast<T*>(bp.dE);  // (atomics; null when dEp is used)
  T* dq = static_cast<T*>(bp.dq);
  T* dk = static_cast<T*>(bp.dk);  // null in deterministic mode (key pass)
  T* dv = static_cast<T*>(bp.dv);  // idem
  T* dt = static_cast<T*>(bp.dt);  // idem
  T* du = static_cast<T*>(bp.du);
  const T* q = cptr<T>(p.q);
  const T* k = cptr<T>(p.k);
  const T* v = cptr<T>(p.v);
  const T* dout = cptr<T>(bp.dout);
  const T* lse = cptr<T>(bp.lse);
  const T* delta = cptr<T>(bp.delta);

  for (int64_t row = gw; row < p.B * N; row += total_warps) {
    const int64_t b = row / N, i = row % N;
    T* dlog_w = bp.dlog_w ? static_cast<T*>(bp.dlog_w) + b * sp.E : nullptr;

    auto process = [&](int n) {
      const bool active = lane < n;
      const T lw = active ? s.lw[lane] : T(0);
      const int64_t j = active ? s.j[lane] : 0;
      const PairRows<T> rw = active ? pair_rows<T>(p, b, i, j, s.o[lane]) : PairRows<T>{};
      T dlw = T(0);
      for (int64_t h0 = 0; h0 < H; h0 += HC) {
        T lg[HC];
        const int nh = lane_group_logits<T, A, HC>(p, rw, active, h0, hid, lg);
#pragma unroll 1
        for (int hh = 0; hh < nh; ++hh) {
          const int64_t h = h0 + hh;
          const int64_t bh = b * H + h;
          const int64_t rowh = bh * N + i;
          const T* dO = dout + rowh * Dv;
          PairGrad<T> g{T(0), T(0), T(0)};
          if (active) {
            const T dP = dot(dO, v + (bh * M + j) * Dv, Dv);
            const T shift = softmax ? softmax_bwd_shift(lse[rowh]) : T(0);
            const T dl = softmax ? delta[rowh] : T(0);
            g = pair_grad(softmax, pick(lg, hh), lw, dP, shift, dl);
          }
          dlw += g.dw;
          if (db2p) {
            const T tot = warp_sum(g.ds);
            if (lane == 0) db2p[h] += tot;
          }
          __syncwarp();  // the previous head's a / dS are read
          s.a[lane] = g.a;
          s.ds[lane] = g.ds;
          if (mlp) s.buf[h * kWarp + lane] = g.ds;
          __syncwarp();
          if (dq) {  // dq_i += scale sum_c dS_c k_jc   (row owned)
            T* dq_h = dq + rowh * Dk;
            const T* k_h = k + bh * M * Dk;
            for (int64_t d = lane; d < Dk; d += kWarp) {
              T acc = T(0);
              for (int c = 0; c < n; ++c) acc += s.ds[c] * k_h[s.j[c] * Dk + d];
              dq_h[d] += scale * acc;
            }
          }
          if (dk) {  // dk_jc += scale dS_c q_i   (atomic)
            const T* q_h = q + rowh * Dk;
            T* dk_h = dk + bh * M * Dk;
            for (int64_t d = lane; d < Dk; d += kWarp) {
              const T qd = scale * q_h[d];
              for (int c = 0; c < n; ++c) {
                const T dsc = s.ds[c];
                if (dsc != T(0)) atomic_add(dk_h + s.j[c] * Dk + d, dsc * qd);
              }
            }
          }
          if (dv) {  // dv_jc += a_c dO_i   (atomic)
            T* dv_h = dv + bh * M * Dv;
            for (int64_t d = lane; d < Dv; d += kWarp) {
              const T go = dO[d];
              for (int c = 0; c < n; ++c) {
                const T ac = s.a[c];
                if (ac != T(0)) atomic_add(dv_h + s.j[c] * Dv + d, ac * go);
              }
            }
          }
        }
      }
      if (active && dlog_w) dlog_w[s.e[lane]] = dlw;
      if (!mlp) return;
      __syncwarp();  // dS of every head (s.buf) and the hidden values (s.hid) are written
      const T* u_row = p.u ? cptr<T>(p.u) + (b * N + i) * R : nullptr;
      T* du_row = du ? du + (b * N + i) * R : nullptr;
      for (int64_t r = lane; r < R; r += kWarp) {
        T du_acc = T(0);
        for (int c = 0; c < n; ++c) {
          const int64_t jc = s.j[c], oc = s.o[c];
          const T* t_row = p.t ? cptr<T>(p.t) + (b * M + jc) * R : nullptr;
          const T* e_row = p.E ? cptr<T>(p.E) + oc * R : nullptr;
          const T dpre = pair_dpre<T, A>(p, s.buf, c, r, u_row, t_row, e_row);
          du_acc += dpre;
          if (dt) atomic_add(dt + (b * M + jc) * R + r, dpre);
          if (dEp) {
            dEp[oc * R + r] += dpre;  // this lane owns column r of the warp's slice
          } else if (dE) {
            atomic_add(dE + oc * R + r, dpre);
          }
        }
        if (du_row) du_row[r] += du_acc;
        if (dW2p) {
          const T* hid_r = s.hid + r * kHidStride;
          for (int64_t h = 0; h < H; ++h) {
            const T* ds_h = s.buf + h * kWarp;
            T acc = T(0);
            for (int c = 0; c < n; ++c) acc += ds_h[c] * hid_r[c];
            dW2p[h * R + r] += acc;
          }
        }
      }
    };

    walk_row(sp, b, i, s, lane, process);
  }
}

// ---------------------------------------------------------------------------
// Key pass (deterministic mode)

template <class T, Activation A>
__global__ void __launch_bounds__(kMaxWarps* kWarp, kMinBlocks)
    sparse_bwd_key_kernel(const SparseBwdParams bp, const CudaBwdExtra ex, const WarpLayout L) {
  ITNET_DYNAMIC_SHARED(unsigned char, smem);
  constexpr int HC = HeadGroup<T>::value;
  const SparseParams& sp = bp.s;
  const KernelParams& p = sp.f;
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t nwarps = static_cast<int64_t>(blockDim.x) / kWarp;
  const int64_t key = static_cast<int64_t>(blockIdx.x) * nwarps + warp;  // (b, j)
  if (key >= p.B * p.M) return;  // whole warps only; no block barrier below
  const int64_t N = p.N, M = p.M, H = p.H, Dk = p.Dk, Dv = p.Dv, R = p.R;
  const int64_t b = key / M, j = key % M;
  const WarpSmem<T> s = WarpSmem<T>::at(smem + warp * L.bytes, L, H);
  const bool softmax = p.softmax;
  T* hid = (p.mlp && H > HC) ? s.hid + lane : nullptr;
  T* dt = static_cast<T*>(bp.dt);
  const bool want_dt = p.mlp && dt != nullptr;
  T* dk = static_cast<T*>(bp.dk);
  T* dv = static_cast<T*>(bp.dv);
  const T* q = cptr<T>(p.q);
  const T* v = cptr<T>(p.v);
  const T* dout = cptr<T>(bp.dout);
  const T* lse = cptr<T>(bp.lse);
  const T* delta = cptr<T>(bp.delta);
  const T scale = static_cast<T>(p.scale);
  const int D = p.window.dims;
  const double* qpos_b = D ? p.qpos + b * p.qpos_bstride : nullptr;
  const double* pk = D ? p.kpos + b * p.kpos_bstride + j * D : nullptr;
  const T* logw = cptr<T>(sp.log_w);

  auto fetch = [&](int64_t x, PairRec<T>& rec) -> bool {
    const int64_t g = ex.perm[x];  // b * E + e
    rec.lw = logw ? logw[g] : T(0);
    if (!pair_present(rec.lw)) return false;  // (the list holds present pairs only)
    rec.i = ex.entry_row[g];
    rec.j = j;
    rec.e = g - b * sp.E;
    rec.o = 0;
    if (D == 0) return true;
    // pair_takes_part with the key's position fixed: kpos_b + j D = pk
    const double* pq = qpos_b + rec.i * D;
    if (!pair_in_window(p.window, pq, pk)) return false;
    if (p.E) rec.o = offset_row(p.window, pq, pk);
    return true;
  };

  auto process = [&](int n) {
    const bool active = lane < n;
    const T lw = active ? s.lw[lane] : T(0);
    const int64_t i = active ? s.i[lane] : 0;
    const PairRows<T> rw = active ? pair_rows<T>(p, b, i, j, s.o[lane]) : PairRows<T>{};
    for (int64_t h0 = 0; h0 < H; h0 += HC) {
      T lg[HC];
      const int nh = lane_group_logits<T, A, HC>(p, rw, active, h0, hid, lg);
#pragma unroll 1
      for (int hh = 0; hh < nh; ++hh) {
        const int64_t h = h0 + hh;
        const int64_t bh = b * H + h;
        PairGrad<T> g{T(0), T(0), T(0)};
        if (active) {
          const int64_t rowh = bh * N + i;
          const T dP = dot(dout + rowh * Dv, v + (bh * M + j) * Dv, Dv);
          const T shift = softmax ? softmax_bwd_shift(lse[rowh]) : T(0);
          const T dl = softmax ? delta[rowh] : T(0);
          g = pair_grad(softmax, pick(lg, hh), lw, dP, shift, dl);
        }
        __syncwarp();  // the previous head's a / dS are read
        s.a[lane] = g.a;
        s.ds[lane] = g.ds;
        if (want_dt) s.buf[h * kWarp + lane] = g.ds;
        __syncwarp();
        if (dv) {  // dv_j += sum_c a_c dO_ic   (owned)
          T* dv_j = dv + (bh * M + j) * Dv;
          const T* dO_h = dout + bh * N * Dv;
          for (int64_t d = lane; d < Dv; d += kWarp) {
            T acc = T(0);
            for (int c = 0; c < n; ++c) acc += s.a[c] * dO_h[s.i[c] * Dv + d];
            dv_j[d] += acc;
          }
        }
        if (dk) {  // dk_j += scale sum_c dS_c q_ic   (owned)
          T* dk_j = dk + (bh * M + j) * Dk;
          const T* q_h = q + bh * N * Dk;
          for (int64_t d = lane; d < Dk; d += kWarp) {
            T acc = T(0);
            for (int c = 0; c < n; ++c) acc += s.ds[c] * q_h[s.i[c] * Dk + d];
            dk_j[d] += scale * acc;
          }
        }
      }
    }
    if (!want_dt) return;
    __syncwarp();  // dS of every head (s.buf) is written
    const T* t_row = cptr<T>(p.t) + (b * M + j) * R;
    T* dt_j = dt + (b * M + j) * R;
    for (int64_t r = lane; r < R; r += kWarp) {
      T acc = T(0);
      for (int c = 0; c < n; ++c) {
        const T* u_row = p.u ? cptr<T>(p.u) + (b * N + s.i[c]) * R : nullptr;
        const T* e_row = p.E ? cptr<T>(p.E) + s.o[c] * R : nullptr;
        acc += pair_dpre<T, A>(p, s.buf, c, r, u_row, t_row, e_row);
      }
      dt_j[r] += acc;
    }
  };

  walk_pairs(ex.key_ptr[key], ex.key_ptr[key + 1], s, lane, fetch, process);
}

// ---------------------------------------------------------------------------
// Launch configuration

const char* dtype_name(int64_t elem) { return elem == 8 ? "float64" : "float32"; }

WarpLayout row_layout(const KernelParams& f, int64_t elem) {
  return WarpLayout::make(elem, f.H, f.R, /*head_buf=*/f.mlp, /*ml=*/false, /*hid=*/f.mlp);
}

WarpLayout key_layout(const SparseBwdParams& bp, int64_t elem, int HC) {
  const KernelParams& f = bp.s.f;
  const bool want_dt = f.mlp && bp.dt != nullptr;
  return WarpLayout::make(elem, f.H, f.R, /*head_buf=*/want_dt, /*ml=*/false,
                          /*hid=*/f.mlp && f.H > HC);
}

int fit_or_fail(const WarpLayout& L, const KernelParams& f, int64_t elem, const CudaDevice& dev,
                const char* what) {
  const int warps = warps_that_fit(L.bytes, dev.smem_optin);
  TORCH_CHECK(warps > 0, "sparse_bwd (CUDA): H = ", f.H, " heads and R = ", f.R,
              " hidden units need ", L.bytes, " bytes of shared memory per warp of the ", what,
              " (", dtype_name(elem), "), more than this GPU's ", dev.smem_optin, " per block");
  return warps;
}

template <class T, Activation A>
void launch(const SparseBwdParams& bp, const CudaBwdExtra& ex, const CudaBwdPlan& plan,
            cudaStream_t stream) {
  const KernelParams& f = bp.s.f;
  constexpr int HC = HeadGroup<T>::value;
  const int64_t elem = sizeof(T);
  {
    const WarpLayout L = row_layout(f, elem);
    TORCH_CHECK(L.bytes == plan.smem_per_warp, "sparse_bwd (CUDA): launch plan mismatch");
    // deterministic mode: the key pass owns dk, dv and dt; dE goes to the partial sums
    SparseBwdParams rp = bp;
    if (ex.deterministic) {
      rp.dk = nullptr;
      rp.dv = nullptr;
      rp.dt = nullptr;
    }
    if (ex.dE_part) rp.dE = nullptr;
    auto* kernel = &sparse_bwd_row_kernel<T, A>;
    const int64_t smem = plan.warps_per_block * L.bytes;
    set_smem(kernel, smem);
    ITNET_LAUNCH(static_cast<unsigned>(plan.blocks), plan.warps_per_block * kWarp,
                 static_cast<size_t>(smem), stream, kernel)(rp, ex, L, plan.warps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (ex.deterministic && f.B * f.M > 0) {
    TORCH_CHECK(ex.perm != nullptr && ex.key_ptr != nullptr && ex.entry_row != nullptr,
                "sparse_bwd (CUDA): the sorted pair list of the deterministic mode is missing");
    const WarpLayout L = key_layout(bp, elem, HC);
    const int warps = static_cast<int>(plan.key_warps_per_block);
    const int64_t blocks = (f.B * f.M + warps - 1) / warps;
    TORCH_CHECK(blocks <= INT_MAX, "sparse_bwd (CUDA): B * M = ", f.B * f.M,
                " keys is more than one launch supports");
    auto* kernel = &sparse_bwd_key_kernel<T, A>;
    const int64_t smem = warps * L.bytes;
    set_smem(kernel, smem);
    ITNET_LAUNCH(static_cast<unsigned>(blocks), warps * kWarp, static_cast<size_t>(smem), stream,
                 kernel)(bp, ex, L);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <class T>
void launch_act(const SparseBwdParams& bp, const CudaBwdExtra& ex, const CudaBwdPlan& plan,
                cudaStream_t stream) {
  const int act = bp.s.f.mlp ? bp.s.f.activation : static_cast<int>(Activation::Relu);
  ITNET_DISPATCH_ACTIVATION(act, A, launch<T, A>(bp, ex, plan, stream));
}

}  // namespace
}  // namespace cuda

CudaBwdPlan cuda_sparse_bwd_plan(const SparseBwdParams& bp, bool is_double, bool deterministic,
                                 const CudaDevice& dev) {
  using namespace cuda;
  const KernelParams& f = bp.s.f;
  const int64_t elem = is_double ? 8 : 4;
  CudaBwdPlan plan;
  const WarpLayout L = row_layout(f, elem);
  plan.smem_per_warp = L.bytes;
  const int fit = fit_or_fail(L, f, elem, dev, "query-side pass");
  if (deterministic) {
    const WarpLayout K = key_layout(bp, elem, is_double ? HeadGroup<double>::value
                                                        : HeadGroup<float>::value);
    plan.key_smem_per_warp = K.bytes;
    plan.key_warps_per_block = fit_or_fail(K, f, elem, dev, "key-side pass");
  }
  // warps of the row pass: enough to fill the GPU, not more than the rows,
  // and their partial sums within kPartialBudget
  const int64_t rows = f.B * f.N;
  int64_t target = std::max<int64_t>(1, std::min<int64_t>(rows, dev.sm_count * kRowWarpsPerSM));
  int64_t part_elems = 0;
  if (f.mlp) part_elems += f.H * f.R;
  if (f.mlp && f.b2) part_elems += f.H;
  if (deterministic && f.mlp && f.E) part_elems += f.O * f.R;
  if (part_elems > 0)
    target = std::min(target, std::max<int64_t>(1, kPartialBudget / (part_elems * elem)));
  plan.warps_per_block = static_cast<int>(std::min<int64_t>(fit, target));
  plan.blocks = (target + plan.warps_per_block - 1) / plan.warps_per_block;
  plan.warps = plan.blocks * plan.warps_per_block;
  TORCH_CHECK(plan.blocks <= INT_MAX, "sparse_bwd (CUDA): too many blocks");
  return plan;
}

void cuda_sparse_bwd(const SparseBwdParams& bp, const CudaBwdExtra& ex, const CudaBwdPlan& plan,
                     bool is_double, cudaStream_t stream) {
  const KernelParams& f = bp.s.f;
  if (f.B * f.N == 0 || f.H == 0) return;
  TORCH_CHECK(f.Dv == 0 || (bp.dout != nullptr && bp.dv != nullptr),
              "sparse_bwd (CUDA): dout / dv missing");
  TORCH_CHECK(!f.softmax || (bp.lse != nullptr && bp.delta != nullptr),
              "sparse_bwd (CUDA): lse / delta missing in softmax mode");
  TORCH_CHECK(!f.content || f.Dk == 0 || (bp.dq != nullptr && bp.dk != nullptr),
              "sparse_bwd (CUDA): dq / dk missing");
  TORCH_CHECK(!f.mlp || f.R == 0 || ex.dW2_part != nullptr,
              "sparse_bwd (CUDA): the dW2 partial sums are missing");
  TORCH_CHECK(!f.mlp || f.b2 == nullptr || ex.db2_part != nullptr,
              "sparse_bwd (CUDA): the db2 partial sums are missing");
  TORCH_CHECK(plan.warps > 0 && plan.blocks > 0, "sparse_bwd (CUDA): empty launch plan");
  if (is_double) {
    cuda::launch_act<double>(bp, ex, plan, stream);
  } else {
    cuda::launch_act<float>(bp, ex, plan, stream);
  }
}

}  // namespace sparse
}  // namespace itnet
