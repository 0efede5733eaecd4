// Device helpers of the sparse op's CUDA kernels (cuda_fwd.cu, cuda_bwd.cu;
// the design is described in cuda_kernel.h): the per-warp shared-memory
// layout, the walk over a row's (or a key's) pairs in packed chunks of up to
// 32, the logits of one lane's pair for a group of heads, the per-pair
// gradient formulas, and the launches' shared-memory sizing. The math itself
// is the shared one: Act<A, T> and the online-softmax helpers (common/math.h),
// the window and offset indexing (common/support.h), the per-pair rules
// (common/pair_grad.h, sparse/pair.h), the warp reductions and atomics of
// common/cuda_warp.cuh, and the pair MLP's rows and pre-activation
// (common/cuda_pair_mlp.cuh). Included only by .cu files.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/activation.h"
#include "common/cuda_pair_mlp.cuh"
#include "common/cuda_warp.cuh"
#include "common/math.h"
#include "common/support.h"
#include "common/pair_grad.h"
#include "sparse/pair.h"
#include "sparse/params.h"

namespace itnet {
namespace sparse {
namespace cuda {

// The helpers shared with the dense kernels (common/cuda_warp.cuh,
// common/cuda_pair_mlp.cuh) by their plain names.
using namespace itnet::cuda;

constexpr int kMaxWarps = 4;  // warps (rows or keys) per block, at most
// __launch_bounds__ minimum blocks per SM: 4 x 128 threads caps a thread at 128
// registers, which the forward and the key pass fit without spills (left to
// itself, ptxas picks fewer registers and spills a few values of the pair walk).
constexpr int kMinBlocks = 4;

// Heads whose logits a lane keeps in registers at once.
template <class T>
struct HeadGroup {
  static constexpr int value = sizeof(T) == 4 ? 8 : 4;
};

// Row stride of the hidden-value buffer (R rows of one value per pair): 33,
// so that reading a row (lanes over pairs) and a column (lanes over hidden
// units) are both free of bank conflicts.
constexpr int64_t kHidStride = kWarp + 1;

// Byte offsets of one warp's slice of the dynamic shared memory (every part
// 16-byte aligned; the slice too):
//   i, j, e, o   int64[32]   the chunk's pairs: query row, key, entry, offset-table row
//   lw, a, ds    T[32]       log-weights; per-head exchange of the weights / logit grads
//   buf          T[H x 32]   backward: dS of every head of the chunk (MLP backward)
//   ml           T[2 H]      forward, softmax: running max and sum per head
//   hid          T[R x 33]   act(pre) of the chunk's pairs (reused by later head
//                            groups and by the backward)
struct WarpLayout {
  int64_t off_lw = 0, off_a = 0, off_ds = 0, off_buf = 0, off_ml = 0, off_hid = 0;
  int64_t bytes = 0;

  ITNET_HD static int64_t align16(int64_t x) { return (x + 15) / 16 * 16; }

  ITNET_HD static WarpLayout make(int64_t elem, int64_t H, int64_t R, bool head_buf, bool ml,
                                  bool hid) {
    WarpLayout L;
    int64_t off = 4 * kWarp * static_cast<int64_t>(sizeof(int64_t));
    L.off_lw = off;
    off = align16(off + kWarp * elem);
    L.off_a = off;
    off = align16(off + kWarp * elem);
    L.off_ds = off;
    off = align16(off + kWarp * elem);
    L.off_buf = off;
    if (head_buf) off = align16(off + H * kWarp * elem);
    L.off_ml = off;
    if (ml) off = align16(off + 2 * H * elem);
    L.off_hid = off;
    if (hid) off = align16(off + R * kHidStride * elem);
    L.bytes = off;
    return L;
  }
};

template <class T>
struct WarpSmem {
  int64_t* i;
  int64_t* j;
  int64_t* e;
  int64_t* o;
  T* lw;
  T* a;
  T* ds;
  T* buf;
  T* m;
  T* l;
  T* hid;

  __device__ __forceinline__ static WarpSmem at(unsigned char* base, const WarpLayout& L,
                                                int64_t H) {
    WarpSmem s;
    s.i = reinterpret_cast<int64_t*>(base);
    s.j = s.i + kWarp;
    s.e = s.j + kWarp;
    s.o = s.e + kWarp;
    s.lw = reinterpret_cast<T*>(base + L.off_lw);
    s.a = reinterpret_cast<T*>(base + L.off_a);
    s.ds = reinterpret_cast<T*>(base + L.off_ds);
    s.buf = reinterpret_cast<T*>(base + L.off_buf);
    s.m = reinterpret_cast<T*>(base + L.off_ml);
    s.l = s.m + H;
    s.hid = reinterpret_cast<T*>(base + L.off_hid);
    return s;
  }
};

// One listed pair that takes part.
template <class T>
struct PairRec {
  int64_t i, j, e, o;
  T lw;
};

// Walks the items [begin, end) (a row's entries, or a key's positions in the
// sorted pair list) 32 at a time: lane x asks fetch(begin + 32 k + x, rec)
// whether its item is a pair that takes part, and the pairs that do are
// packed into the warp's chunk (s.i / s.j / s.e / s.o / s.lw, in item order).
// process(n) runs on the whole warp whenever the next batch would overflow
// the chunk, and once at the end, with the chunk's n (1..32) pairs: lane c < n
// holds pair c. The chunk's slots are visible to every lane inside process,
// and process must be done with them when it returns (a __syncwarp follows).
// Every lane must call this with the same begin / end.
template <class T, class Fetch, class Process>
__device__ __forceinline__ void walk_pairs(int64_t begin, int64_t end, const WarpSmem<T>& s,
                                           int lane, Fetch& fetch, Process& process) {
  int n = 0;
  for (int64_t x0 = begin;; x0 += kWarp) {
    const bool last = x0 >= end;
    PairRec<T> rec;
    bool part = false;
    if (!last && x0 + lane < end) part = fetch(x0 + lane, rec);
    const unsigned mask = __ballot_sync(kFullMask, part);
    const int total = __popc(mask);
    if (last || n + total > kWarp) {  // (uniform)
      if (n > 0) {
        __syncwarp();  // the chunk's slots are written
        process(n);
        __syncwarp();  // ... and read
      }
      n = 0;
      if (last) break;
    }
    if (part) {
      const int slot = n + __popc(mask & ((1u << lane) - 1u));
      s.i[slot] = rec.i;
      s.j[slot] = rec.j;
      s.e[slot] = rec.e;
      s.o[slot] = rec.o;
      s.lw[slot] = rec.lw;
    }
    n += total;
  }
}

// Whether the listed pair (query i, key j, log-weight lw) takes part, and its
// offset-table row: present (lw != -inf), inside the window (when there is
// one). pq / kpos_b: the query's position row and the batch's key positions
// (null without a window).
template <class T>
__device__ __forceinline__ bool pair_takes_part(const KernelParams& p, T lw, int64_t j,
                                                const double* pq, const double* kpos_b,
                                                int64_t& o) {
  o = 0;
  if (!pair_present(lw)) return false;
  const int D = p.window.dims;
  if (D > 0) {
    const double* pk = kpos_b + j * D;
    if (!pair_in_window(p.window, pq, pk)) return false;
    if (p.E) o = offset_row(p.window, pq, pk);
  }
  return true;
}

// walk_pairs' fetch over the entries of query row (b, i): entry e is a pair
// that takes part (pair_takes_part); an absent pair's key is never read.
template <class T>
struct RowFetch {
  const KernelParams& p;
  const int64_t* col;
  const T* logw;
  const double* pq;
  const double* kpos_b;
  int64_t i;

  __device__ __forceinline__ RowFetch(const SparseParams& sp, int64_t b, int64_t i_)
      : p(sp.f),
        col(sp.col_idx + b * sp.E),
        logw(sp.log_w ? cptr<T>(sp.log_w) + b * sp.E : nullptr),
        pq(sp.f.window.dims ? sp.f.qpos + b * sp.f.qpos_bstride + i_ * sp.f.window.dims
                            : nullptr),
        kpos_b(sp.f.window.dims ? sp.f.kpos + b * sp.f.kpos_bstride : nullptr),
        i(i_) {}

  __device__ __forceinline__ bool operator()(int64_t e, PairRec<T>& rec) const {
    rec.lw = logw ? logw[e] : T(0);
    if (!pair_present(rec.lw)) return false;
    rec.i = i;
    rec.j = col[e];
    rec.e = e;
    return pair_takes_part(p, rec.lw, rec.j, pq, kpos_b, rec.o);
  }
};

// walk_pairs over the entries of query row (b, i) (RowFetch): the walk of
// the forward and of the backward's row pass.
template <class T, class Process>
__device__ __forceinline__ void walk_row(const SparseParams& sp, int64_t b, int64_t i,
                                         const WarpSmem<T>& s, int lane, Process& process) {
  RowFetch<T> fetch(sp, b, i);
  const int64_t* rp = sp.row_ptr + b * (sp.f.N + 1);
  walk_pairs(rp[i], rp[i + 1], s, lane, fetch, process);
}

// The rows the logit of one pair (b, i, j, o) reads (null when absent).
template <class T>
struct PairRows {
  const T* q;  // q row of head 0; head h at q + h N Dk
  const T* k;  // k row of head 0; head h at k + h M Dk
  MlpRows<T> mlp;
};

template <class T>
__device__ __forceinline__ PairRows<T> pair_rows(const KernelParams& p, int64_t b, int64_t i,
                                                 int64_t j, int64_t o) {
  PairRows<T> rw{};
  if (p.content && p.Dk > 0) {
    rw.q = cptr<T>(p.q) + (b * p.H * p.N + i) * p.Dk;
    rw.k = cptr<T>(p.k) + (b * p.H * p.M + j) * p.Dk;
  }
  if (p.mlp && p.R > 0) rw.mlp = mlp_rows<T>(p, b, i, j, o);
  return rw;
}

// Logits of heads h0 .. h0 + nh - 1 (nh <= HC) of the lane's pair, in
// registers (s[hh], 0 past nh): the content term, then b2 + sum_r W2 act(pre),
// the dense kernels' order. hid: the lane's column of the hidden-value buffer
// (stride kHidStride) or null; hid_ready: read the hidden values from it
// (written by an earlier head group of the same chunk) instead of evaluating
// the activations, which are then stored there when hid is given.
template <class T, Activation A, int HC>
__device__ __forceinline__ void group_logits(const KernelParams& p, const PairRows<T>& rw,
                                             int64_t h0, int nh, T* hid, bool hid_ready,
                                             T (&s)[HC]) {
#pragma unroll
  for (int hh = 0; hh < HC; ++hh) s[hh] = T(0);
  if (rw.q) {
    const T sc = static_cast<T>(p.scale);
    const int64_t Dk = p.Dk;
#pragma unroll
    for (int hh = 0; hh < HC; ++hh) {
      if (hh < nh) {
        const T* qh = rw.q + (h0 + hh) * p.N * Dk;
        const T* kh = rw.k + (h0 + hh) * p.M * Dk;
        T acc = T(0);
        for (int64_t d = 0; d < Dk; ++d) acc += qh[d] * kh[d];
        s[hh] = sc * acc;
      }
    }
  }
  if (p.mlp) {
    const int64_t R = p.R;
    const T* W2 = cptr<T>(p.W2) + h0 * R;
    const T* b2 = cptr<T>(p.b2);
    T acc[HC];
#pragma unroll
    for (int hh = 0; hh < HC; ++hh) acc[hh] = (b2 && hh < nh) ? b2[h0 + hh] : T(0);
    for (int64_t r = 0; r < R; ++r) {
      T hv;
      if (hid_ready) {
        hv = hid[r * kHidStride];
      } else {
        hv = Act<A, T>::fwd(pair_preact(rw.mlp.u, rw.mlp.t, rw.mlp.e, r));
        if (hid) hid[r * kHidStride] = hv;
      }
#pragma unroll
      for (int hh = 0; hh < HC; ++hh)
        if (hh < nh) acc[hh] += W2[hh * R + r] * hv;
    }
#pragma unroll
    for (int hh = 0; hh < HC; ++hh) s[hh] += acc[hh];
  }
}

// The logits of the head group starting at h0 (nh = min(HC, H - h0) heads,
// returned) of the lane's pair, as group_logits computes them, and 0 on an
// idle lane (one past the chunk's n pairs). hid: as for group_logits, ready
// from the second group on.
template <class T, Activation A, int HC>
__device__ __forceinline__ int lane_group_logits(const KernelParams& p, const PairRows<T>& rw,
                                                 bool active, int64_t h0, T* hid, T (&lg)[HC]) {
  const int nh = static_cast<int>(p.H - h0 < HC ? p.H - h0 : HC);
#pragma unroll
  for (int hh = 0; hh < HC; ++hh) lg[hh] = T(0);
  if (active) group_logits<T, A, HC>(p, rw, h0, nh, hid, h0 > 0, lg);
  return nh;
}

// s[k] for a run-time k < HC without indexing the register array.
template <int HC, class T>
__device__ __forceinline__ T pick(const T (&s)[HC], int k) {
  T r = s[0];
#pragma unroll
  for (int x = 1; x < HC; ++x) r = x == k ? s[x] : r;
  return r;
}

// What one pair contributes in the backward, for one head (common/pair_grad.h),
// with dw the log-weight gradient. l: the logit (without lw); dP = <dO_i, v_j>;
// shift = softmax_bwd_shift(lse_i), delta = rowsum(dO_i O_i) - grad_lse_i
// (softmax mode only).
template <class T>
__device__ __forceinline__ PairGrad<T> pair_grad(bool softmax, T l, T lw, T dP, T shift,
                                                 T delta) {
  if (softmax) return itnet::pair_grad(true, l + lw, T(1), dP, shift, delta);
  const T w = pair_weight(lw);
  PairGrad<T> g = itnet::pair_grad(false, l, w, dP, shift, delta);
  g.dw = none_log_weight_grad(l, w, dP);  // d/d(log w) = w d/dw
  return g;
}

// Gradient of the pre-activation of hidden unit r of pair c of the chunk:
// (sum_h dS_h[c] W2[h, r]) act'(pre), with dS of every head in ds_buf
// (H x 32) and the pair's u / t / E rows (null when absent).
template <class T, Activation A>
__device__ __forceinline__ T pair_dpre(const KernelParams& p, const T* ds_buf, int c, int64_t r,
                                       const T* u_row, const T* t_row, const T* e_row) {
  const T* w2 = cptr<T>(p.W2) + r;
  T dsum = T(0);
  for (int64_t h = 0; h < p.H; ++h) dsum += ds_buf[h * kWarp + c] * w2[h * p.R];
  T dact;
  Act<A, T>::fwd_grad(pair_preact(u_row, t_row, e_row, r), dact);
  return dsum * dact;
}

// Warps per block (kMaxWarps, halved until they fit) for `per_warp` bytes of
// dynamic shared memory each; 0 when not even one warp fits.
inline int warps_that_fit(int64_t per_warp, int64_t limit) {
  int w = kMaxWarps;
  while (w > 0 && w * per_warp > limit) w /= 2;
  return w;
}

// Raises the kernel's dynamic shared-memory limit when `smem` bytes are more
// than the default 48 KiB.
template <class Kernel>
void set_smem(Kernel* kernel, int64_t smem) {
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  }
}

}  // namespace cuda
}  // namespace sparse
}  // namespace itnet
