// The pieces shared by the head-major rows (sparse/cpu_kernel.cpp) and the
// pair-major rows (sparse/cpu_pair_major.h) of the sparse op's CPU kernels:
// the chunk of present pairs of a query row (gather_chunk), the per-thread
// scratch, the row-vector helpers and the per-pair weights and logit
// gradients of every head.
//
// Included only by sparse/cpu_kernel.cpp, which is compiled once per CPU
// capability: everything is inside the capability's namespace.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/cpu_gemm.h"
#include "common/cpu_vec.h"
#include "common/pair_grad.h"
#include "common/support.h"
#include "sparse/cpu_kernel.h"
#include "sparse/pair.h"

namespace itnet {
namespace sparse {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;
using itnet::CPU_CAPABILITY::hsum;
using itnet::CPU_CAPABILITY::load;
using itnet::CPU_CAPABILITY::store;

constexpr int64_t kC = kCpuPairChunk;
// whole-vector stores into the (R x kC) chunk buffers need kC % vector width == 0
static_assert(kC % 16 == 0, "kCpuPairChunk must be a multiple of the widest vector");

inline const double* qpos_of(const KernelParams& p, int64_t b) {
  return p.qpos + b * p.qpos_bstride;
}
inline const double* kpos_of(const KernelParams& p, int64_t b) {
  return p.kpos + b * p.kpos_bstride;
}

template <class T>
inline T dot(const T* a, const T* b, int64_t n) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  T s = T(0);
  int64_t d = 0;
  if (n >= VS) {  // no horizontal sum for the short rows (Dv, Dk < one vector)
    V acc(T(0));
    for (; d + VS <= n; d += VS) acc = at::vec::fmadd(V::loadu(a + d), V::loadu(b + d), acc);
    s = hsum(acc);
  }
  for (; d < n; ++d) s += a[d] * b[d];
  return s;
}

// y += alpha x. Scalar tail: a masked at::vec load / store goes through a
// temporary buffer, far slower than a few scalars for the small Dv / Dk (1 to
// 16) of point-cloud problems.
template <class T>
inline void axpy(T alpha, const T* x, T* y, int64_t n) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  const V va(alpha);
  int64_t d = 0;
  for (; d + VS <= n; d += VS) at::vec::fmadd(va, V::loadu(x + d), V::loadu(y + d)).store(y + d);
  for (; d < n; ++d) y[d] += alpha * x[d];
}

// out[0:n) += sum_c a[c] * rows[c][0:n), the rows gathered by the chunk's
// keys. The sum over c stays in registers (two chains to hide the FMA
// latency): accumulating into memory pair by pair would make every pair wait
// for the previous store of the same output, the bottleneck for small n.
template <class T>
inline void gather_axpy(const T* a, const int64_t* j, int64_t cnt, const T* base, int64_t ld,
                        T* out, int64_t n) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  int64_t d = 0;
  for (; d + VS <= n; d += VS) {
    V acc0 = V::loadu(out + d), acc1(T(0));
    int64_t c = 0;
    for (; c + 1 < cnt; c += 2) {
      acc0 = at::vec::fmadd(V(a[c]), V::loadu(base + j[c] * ld + d), acc0);
      acc1 = at::vec::fmadd(V(a[c + 1]), V::loadu(base + j[c + 1] * ld + d), acc1);
    }
    if (c < cnt) acc0 = at::vec::fmadd(V(a[c]), V::loadu(base + j[c] * ld + d), acc0);
    (acc0 + acc1).store(out + d);
  }
  for (; d < n; ++d) {
    T acc0 = out[d], acc1 = T(0);
    int64_t c = 0;
    for (; c + 1 < cnt; c += 2) {
      acc0 += a[c] * base[j[c] * ld + d];
      acc1 += a[c + 1] * base[j[c + 1] * ld + d];
    }
    if (c < cnt) acc0 += a[c] * base[j[c] * ld + d];
    out[d] = acc0 + acc1;
  }
}

// Pair-major layout (sparse/cpu_pair_major.h) for the MLP term with at least
// this many heads: the chunk's logits are then one matrix product whose rows
// are pairs and whose columns are the heads, and every per-pair operation is
// a whole-vector operation over the heads. Below it (the attention-like
// H <= 8 of most models) a vector over the heads would be mostly padding, and
// the head-major rows of sparse/cpu_kernel.cpp are used. The rule does not
// depend on the CPU capability, so a test's shape decides which path it takes.
constexpr int64_t kPairMajorMinHeads = 16;

inline bool use_pair_major(const KernelParams& p) { return p.mlp && p.H >= kPairMajorMinHeads; }

// Per-thread scratch, sized once per range of rows.
template <class T>
struct Scratch {
  // the chunk: entry, key, log-weight, offset-table row of each present pair
  int64_t e[kC], j[kC], orow[kC];
  T lw[kC];
  int64_t n = 0;
  std::vector<T> O, m, l;   // forward accumulators: H x Dv, H, H
  std::vector<T> dlw;       // backward: d/d log_w of the chunk's pairs
  // per row: dO of every head (H x Dv, backward), the softmax shift and
  // delta per head; per pair: dP and the weights of every head (the
  // pair-major forward keeps the chunk's new maxima in hP)
  std::vector<T> dOr, shiftH, deltaH, hP, hA;
  // backward of the MLP term: dW2^T (R x H) and db2 (H) summed over the range
  std::vector<T> dW2T, db2s;

  // Head-major (sparse/cpu_kernel.cpp)
  std::vector<T> S;         // logits (later dS) of every head: H x kC
  std::vector<T> te;        // t_j + E[o(i, j)] of the chunk, transposed: R x kC
  std::vector<T> hid;       // R lanes
  // backward of the pair MLP: the chunk's hidden layer, its derivative and its
  // gradient (R x kC each), dS transposed (kC x H); du lanes of the row (R
  // lanes)
  std::vector<T> hidC, dactC, dhidC, dST, duacc, hS;

  // Pair-major (sparse/cpu_pair_major.h): leading dimension Hp = H rounded up
  // to whole vectors, so that a pair's row of heads is whole vectors
  int64_t Hp = 0;
  std::vector<T> SP;        // logits (later dS) of the chunk: kC x Hp
  std::vector<T> hidP, dactP, dhidP;  // hidden layer, act', its gradient: kC x R
  std::vector<T> W2T;       // W2 transposed, zero-padded: R x Hp
  std::vector<T> duP;       // du of the row: R

  Scratch(const KernelParams& p, bool backward) {
    const int64_t VS = Vectorized<T>::size();
    const bool pm = use_pair_major(p);
    if (pm) {
      Hp = (p.H + VS - 1) / VS * VS;
      SP.assign(kC * Hp, T(0));
      hidP.resize(kC * p.R);
      W2T.assign(p.R * Hp, T(0));
      const T* W2 = static_cast<const T*>(p.W2);
      for (int64_t h = 0; h < p.H; ++h)
        for (int64_t r = 0; r < p.R; ++r) W2T[r * Hp + h] = W2[h * p.R + r];
    } else {
      S.resize(p.H * kC);
      if (p.mlp) {
        te.resize(p.R * kC);
        hid.resize(p.R * VS);
      }
    }
    // per-head vectors: Hp entries in the pair-major rows, which read whole
    // vectors of them (the padding entries are never written out)
    const int64_t Hv = std::max(Hp, p.H);
    shiftH.assign(Hv, T(0));
    hP.assign(Hv, T(0));
    if (!backward) {
      O.resize(p.H * p.Dv);
      m.resize(Hv);
      l.resize(Hv);
      return;
    }
    dlw.resize(kC);
    dOr.resize(p.H * p.Dv);
    deltaH.assign(Hv, T(0));
    hA.assign(Hv, T(0));
    if (!pm) hS.resize(p.H);
    if (!p.mlp) return;
    dW2T.assign(p.R * p.H, T(0));
    db2s.assign(std::max(Hp, p.H), T(0));
    if (pm) {
      dactP.resize(kC * p.R);
      dhidP.resize(kC * p.R);
      duP.resize(p.R);
    } else {
      hidC.resize(p.R * kC);
      dactC.resize(p.R * kC);
      dhidC.resize(p.R * kC);
      dST.resize(kC * p.H);
      duacc.resize(p.R * VS);
    }
  }
};

// Gathers up to kC pairs of row (b, i) that take part (present, inside the
// window), starting at entry `e`, which it advances past the entries read.
template <class T>
void gather_chunk(const SparseParams& sp, int64_t b, int64_t i, int64_t& e, int64_t end,
                  Scratch<T>& ws) {
  const KernelParams& p = sp.f;
  const int64_t* col = sp.col_idx + b * sp.E;
  const T* lw = sp.log_w ? static_cast<const T*>(sp.log_w) + b * sp.E : nullptr;
  const int D = p.window.dims;
  const double* pq = D ? qpos_of(p, b) + i * D : nullptr;
  const double* kpos = D ? kpos_of(p, b) : nullptr;
  ws.n = 0;
  for (; e < end && ws.n < kC; ++e) {
    const T w = lw ? lw[e] : T(0);
    if (!pair_present(w)) continue;
    const int64_t j = col[e];
    if (D && !pair_in_window(p.window, pq, kpos + j * D)) continue;
    ws.e[ws.n] = e;
    ws.j[ws.n] = j;
    ws.lw[ws.n] = w;
    ws.orow[ws.n] = p.E ? offset_row(p.window, pq, kpos + j * D) : 0;
    ++ws.n;
  }
}

// Weights and logit gradients of one pair for every head, vectorized over the
// heads: a = exp(l + lw - shift) and dS = a (dP - delta) (softmax), or a = l w
// and dS = w dP (`none`). s holds the logits l on entry and dS on return; the
// result is d/d log_w of the pair (summed over heads).
template <class T>
T pair_head_grads(bool softmax, T* s, const T* dP, T lw, T w, const T* shift, const T* delta,
                  T* a, int64_t H) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  V acc(T(0));
  int64_t h = 0;
  for (; h + VS <= H; h += VS) {
    const V l = V::loadu(s + h), dp = V::loadu(dP + h);
    V av, ds;
    if (softmax) {
      av = Ops<V>::exp(l + V(lw) - V::loadu(shift + h));
      ds = softmax_logit_grad(av, dp, V::loadu(delta + h));
      acc = acc + ds;
    } else {
      av = l * V(w);
      ds = none_logit_grad(V(w), dp);
      acc = acc + none_log_weight_grad(l, V(w), dp);
    }
    av.store(a + h);
    ds.store(s + h);
  }
  T dlw = h ? hsum(acc) : T(0);
  for (; h < H; ++h) {
    const T l = s[h];
    if (softmax) {
      a[h] = Ops<T>::exp(l + lw - shift[h]);
      s[h] = softmax_logit_grad(a[h], dP[h], delta[h]);
      dlw += s[h];
    } else {
      a[h] = l * w;
      s[h] = none_logit_grad(w, dP[h]);
      dlw += none_log_weight_grad(l, w, dP[h]);
    }
  }
  return dlw;
}

// x[h] * y[h] into out (=), or accumulated into out (+=), for h < n: a vector
// body and a scalar tail (the masked at::vec ops go through a buffer, slower than
// a few scalars for the H <= 8 of the head-major rows).
template <class T, bool kAccumulate>
inline void row_product(const T* x, const T* y, T* out, int64_t n) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  int64_t h = 0;
  for (; h + VS <= n; h += VS) {
    const V xy = V::loadu(x + h) * V::loadu(y + h);
    (kAccumulate ? V::loadu(out + h) + xy : xy).store(out + h);
  }
  for (; h < n; ++h) out[h] = kAccumulate ? out[h] + x[h] * y[h] : x[h] * y[h];
}

// The backward's per-row state: dO of every head (ws.dOr, H x Dv) and, in softmax
// mode, the shift and delta of every head.
template <class T>
void load_row_grads(const SparseBwdParams& bp, int64_t b, int64_t i, Scratch<T>& ws) {
  const KernelParams& p = bp.s.f;
  const int64_t H = p.H, Dv = p.Dv;
  for (int64_t h = 0; h < H; ++h) {
    const int64_t row = (b * H + h) * p.N + i;
    std::copy_n(static_cast<const T*>(bp.dout) + row * Dv, Dv, ws.dOr.data() + h * Dv);
    ws.shiftH[h] = p.softmax ? softmax_bwd_shift(static_cast<const T*>(bp.lse)[row]) : T(0);
    ws.deltaH[h] = p.softmax ? static_cast<const T*>(bp.delta)[row] : T(0);
  }
}

// One pair's backward for every head, given its row of logits s (H contiguous
// values; dS on return) and its key-major v / dv blocks (H x Dv): dP = <dO, v_j>
// per head, the weights and dS (pair_head_grads), dv_j += a dO. Returns
// d/d log_w of the pair.
template <class T>
T pair_backward(const KernelParams& p, T* s, const T* vj, T* dvj, T lw, Scratch<T>& ws) {
  const int64_t H = p.H, Dv = p.Dv;
  const T* dOr = ws.dOr.data();
  T* dP = ws.hP.data();
  T* a = ws.hA.data();
  if (Dv == 1) {
    row_product<T, false>(dOr, vj, dP, H);
  } else {
    for (int64_t h = 0; h < H; ++h) dP[h] = dot(dOr + h * Dv, vj + h * Dv, Dv);
  }
  const T w = p.softmax ? T(1) : pair_weight(lw);
  const T dlw =
      pair_head_grads(p.softmax, s, dP, lw, w, ws.shiftH.data(), ws.deltaH.data(), a, H);
  if (Dv == 1) {
    row_product<T, true>(a, dOr, dvj, H);
  } else {
    for (int64_t h = 0; h < H; ++h) axpy(a[h], dOr + h * Dv, dvj + h * Dv, Dv);
  }
  return dlw;
}

// Content term of a chunk's backward, dS of head h and pair c at
// dS[h * hstride + c * cstride]: dq_i += s dS k_j (register sums over the pairs),
// dk_j += s dS q_i (into this thread's key-major buffer dk_t).
template <class T>
void chunk_content_backward(const SparseBwdParams& bp, int64_t b, int64_t i,
                            const Scratch<T>& ws, const T* dS, int64_t hstride, int64_t cstride,
                            T* dk_t) {
  const KernelParams& p = bp.s.f;
  const int64_t H = p.H, Dk = p.Dk, M = p.M, n = ws.n;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(bp.s.k_km);
  const T sc = static_cast<T>(p.scale);
  for (int64_t h = 0; h < H; ++h) {
    const int64_t row = (b * H + h) * p.N + i;
    const T* qi = q + row * Dk;
    T* dqi = static_cast<T*>(bp.dq) + row * Dk;
    const T* kh = k + (b * M * H + h) * Dk;
    T* dkh = dk_t + (b * M * H + h) * Dk;
    T sds[kC];
    for (int64_t c = 0; c < n; ++c) {
      sds[c] = sc * dS[h * hstride + c * cstride];
      axpy(sds[c], qi, dkh + ws.j[c] * H * Dk, Dk);
    }
    gather_axpy(sds, ws.j, n, kh, H * Dk, dqi, Dk);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace sparse
}  // namespace itnet
