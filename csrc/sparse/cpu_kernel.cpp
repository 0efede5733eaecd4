// Fused CPU forward and backward of the sparse (pair-list) integral transform.
// Compiled once per CPU capability (see setup.py); nothing here touches ATen
// tensors or threads: sparse/cpu.cpp fills the params, splits the query rows
// over threads and sums the per-thread gradient buffers.
//
// One item is one query row. Its present pairs are gathered kCpuPairChunk at
// a time (key, log-weight, offset-table row); the logits of every head for
// the chunk are built in a (H x chunk) buffer: the content term by dot
// products over Dk, the pair MLP with the register blocks of common/cpu_pair_tile.h,
// vectorized over the pairs of the chunk. Softmax rows use the online
// softmax across chunks, exactly as the dense forward does across key tiles.
// k, v and the key-side gradient buffers are key-major (B, M, H, D): a pair's
// heads are one contiguous block. The backward recomputes the chunk's logits,
// then walks the pairs with every head at once (weights, dS, dv, dlog_w), and
// does the MLP part as two small matrix products over the chunk.
#include "common/cpu_gemm.h"
#include "common/cpu_pair_tile.h"
#include "common/dispatch.h"
#include "common/support.h"
#include "sparse/cpu_kernel.h"
#include "sparse/pair.h"

namespace itnet {
namespace sparse {
namespace CPU_CAPABILITY {
namespace {

using namespace itnet::CPU_CAPABILITY::pair_tile;
using itnet::CPU_CAPABILITY::gemm;
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

// Per-thread scratch, sized once per range of rows.
template <class T>
struct Scratch {
  // the chunk: entry, key, log-weight, offset-table row of each present pair
  int64_t e[kC], j[kC], orow[kC];
  T lw[kC];
  int64_t n = 0;
  std::vector<T> S;         // logits (later dS) of every head: H x kC
  std::vector<T> te;        // t_j + E[o(i, j)] of the chunk, transposed: R x kC
  std::vector<T> hid;       // R lanes
  std::vector<T> O, m, l;   // forward accumulators: H x Dv, H, H
  std::vector<T> dlw;       // backward: d/d log_w of the chunk's pairs
  // backward of the pair MLP: the chunk's hidden layer, its derivative and its
  // gradient (R x kC each), dS transposed (kC x H); du lanes of the row (R
  // lanes); dW2^T (R x H) and db2 (H) summed over the range
  std::vector<T> hidC, dactC, dhidC, dST, duacc, dW2T, db2s;
  // backward, per row: dO of every head (H x Dv), the softmax shift and delta per head;
  // per pair: the heads' logits / dS, dP and weights (H each)
  std::vector<T> dOr, shiftH, deltaH, hS, hP, hA;

  Scratch(const KernelParams& p, bool backward) {
    const int64_t VS = Vectorized<T>::size();
    S.resize(p.H * kC);
    if (p.mlp) {
      te.resize(p.R * kC);
      hid.resize(p.R * VS);
    }
    if (!backward) {
      O.resize(p.H * p.Dv);
      m.resize(p.H);
      l.resize(p.H);
    } else {
      dlw.resize(kC);
      dOr.resize(p.H * p.Dv);
      shiftH.resize(p.H);
      deltaH.resize(p.H);
      hS.resize(p.H);
      hP.resize(p.H);
      hA.resize(p.H);
      if (p.mlp) {
        hidC.resize(p.R * kC);
        dactC.resize(p.R * kC);
        dhidC.resize(p.R * kC);
        dST.resize(kC * p.H);
        duacc.resize(p.R * VS);
        dW2T.assign(p.R * p.H, T(0));
        db2s.assign(p.H, T(0));
      }
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

// Key-side MLP pre-activations of the chunk, transposed: te[r][c]. One
// contiguous output row per r (the rows of t are gathered).
template <class T>
const T* chunk_key_preact(const KernelParams& p, int64_t b, Scratch<T>& ws) {
  const T* t = static_cast<const T*>(p.t);  // (B, M, R)
  const T* E = static_cast<const T*>(p.E);
  if (!t && !E) return nullptr;
  const int64_t R = p.R, n = ws.n;
  int64_t trow[kC], erow[kC];
  for (int64_t c = 0; c < n; ++c) {
    trow[c] = (b * p.M + ws.j[c]) * R;
    erow[c] = ws.orow[c] * R;
  }
  T* te = ws.te.data();
  for (int64_t r = 0; r < R; ++r) {
    T* dst = te + r * kC;
    if (t && E) {
      for (int64_t c = 0; c < n; ++c) dst[c] = t[trow[c] + r] + E[erow[c] + r];
    } else if (t) {
      for (int64_t c = 0; c < n; ++c) dst[c] = t[trow[c] + r];
    } else {
      for (int64_t c = 0; c < n; ++c) dst[c] = E[erow[c] + r];
    }
  }
  return te;
}

// Logits of every head for the chunk's pairs: S[h][c].
template <class T, Activation A>
void chunk_logits(const SparseParams& sp, int64_t b, int64_t i, Scratch<T>& ws) {
  const KernelParams& p = sp.f;
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  const int64_t n = ws.n, H = p.H;
  T* S = ws.S.data();
  for (int64_t h = 0; h < H; ++h) {
    T* Sh = S + h * kC;
    if (p.content) {
      const int64_t bh = b * H + h;
      const T* qi = static_cast<const T*>(p.q) + (bh * p.N + i) * p.Dk;
      const T* k = static_cast<const T*>(sp.k_km) + (b * p.M * H + h) * p.Dk;  // key-major
      const int64_t ld = H * p.Dk;
      const T sc = static_cast<T>(p.scale);
      for (int64_t c = 0; c < n; ++c) Sh[c] = sc * dot(qi, k + ws.j[c] * ld, p.Dk);
    } else {
      std::fill_n(Sh, n, T(0));
    }
  }
  if (!p.mlp) return;
  const int64_t R = p.R;
  const T* te = chunk_key_preact(p, b, ws);
  const T* ui = p.u ? static_cast<const T*>(p.u) + (b * p.N + i) * R : nullptr;
  const T* W2 = static_cast<const T*>(p.W2);
  const T* b2 = static_cast<const T*>(p.b2);
  for (int64_t cv = 0; cv < n; cv += VS) {
    const int64_t cnt = std::min(VS, n - cv);
    for (int64_t h = 0; h < H; h += 8) {
      const T* b2h = b2 ? b2 + h : nullptr;
      T* Sh = S + h * kC + cv;
      const T* tc = te ? te + cv : nullptr;
      const bool first = h == 0;
      switch (std::min<int64_t>(8, H - h)) {
#define ITNET_CASE(nh) \
  case nh: mlp_heads<nh, A>(R, ui, tc, kC, cnt, first, ws.hid.data(), W2 + h * R, b2h, Sh, kC); break;
        ITNET_CASE(1) ITNET_CASE(2) ITNET_CASE(3) ITNET_CASE(4)
        ITNET_CASE(5) ITNET_CASE(6) ITNET_CASE(7) ITNET_CASE(8)
#undef ITNET_CASE
        default: break;
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Forward

template <class T, Activation A>
void fwd_row(const SparseParams& sp, int64_t b, int64_t i, Scratch<T>& ws) {
  const KernelParams& p = sp.f;
  const int64_t H = p.H, Dv = p.Dv;
  T* O = ws.O.data();
  std::fill(ws.O.begin(), ws.O.end(), T(0));
  std::fill(ws.m.begin(), ws.m.end(), neg_inf<T>());
  std::fill(ws.l.begin(), ws.l.end(), T(0));
  const int64_t* rp = sp.row_ptr + b * (p.N + 1);
  const T* v = static_cast<const T*>(sp.v_km);  // (B, M, H, Dv)
  T w[kC];
  for (int64_t e = rp[i], end = rp[i + 1]; e < end;) {
    gather_chunk(sp, b, i, e, end, ws);
    const int64_t n = ws.n;
    if (n == 0) continue;
    chunk_logits<T, A>(sp, b, i, ws);
    if (!p.softmax)
      for (int64_t c = 0; c < n; ++c) w[c] = pair_weight(ws.lw[c]);
    for (int64_t h = 0; h < H; ++h) {
      T* Sh = ws.S.data() + h * kC;
      T* Oh = O + h * Dv;
      if (p.softmax) {
        for (int64_t c = 0; c < n; ++c) Sh[c] += ws.lw[c];
        T& mh = ws.m[h];
        const T m_new = std::max(mh, row_max(Sh, n));
        const T alpha = softmax_rescale(mh, m_new);
        const T rsum = row_exp_sum(Sh, Sh, n, softmax_shift(m_new));
        ws.l[h] = ws.l[h] * alpha + rsum;
        if (alpha != T(1)) row_scale(Oh, alpha, Dv);
        mh = m_new;
      } else {
        for (int64_t c = 0; c < n; ++c) Sh[c] *= w[c];
      }
      gather_axpy(Sh, ws.j, n, v + (b * p.M * H + h) * Dv, H * Dv, Oh, Dv);
    }
  }
  for (int64_t h = 0; h < H; ++h) {
    const int64_t row = (b * H + h) * p.N + i;
    T* out = static_cast<T*>(p.out) + row * Dv;
    const T* Oh = O + h * Dv;
    if (p.softmax) {
      const T inv = softmax_inv_sum(ws.l[h]);
      for (int64_t d = 0; d < Dv; ++d) out[d] = Oh[d] * inv;
      static_cast<T*>(p.lse)[row] = softmax_lse(ws.m[h], ws.l[h]);
    } else {
      std::copy_n(Oh, Dv, out);
    }
  }
}

template <class T, Activation A>
void fwd_range(const SparseParams& sp, int64_t begin, int64_t end) {
  Scratch<T> ws(sp.f, /*backward=*/false);
  for (int64_t row = begin; row < end; ++row) fwd_row<T, A>(sp, row / sp.f.N, row % sp.f.N, ws);
}

// ---------------------------------------------------------------------------
// Backward

// MLP part of the backward of a chunk, given dS (ws.S, H x kC, and transposed in
// ws.dST, kC x H), as two small
// matrix products over the chunk's pairs (dhid = W2^T dS, dW2^T += hid dS^T):
// per-(head, hidden unit) register accumulators would not fit in L1 for
// point-cloud sized MLPs (H = R = 64). du of the row goes to ws.duacc lanes,
// dt / dE are scattered into this thread's buffers.
template <class T, Activation A>
void chunk_mlp_backward(const SparseBwdParams& bp, int64_t b, int64_t i, Scratch<T>& ws,
                        T* dt_t, T* dE_t) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  const KernelParams& p = bp.s.f;
  const int64_t R = p.R, H = p.H, n = ws.n;
  const T* te = chunk_key_preact(p, b, ws);
  const T* ui = p.u ? static_cast<const T*>(p.u) + (b * p.N + i) * R : nullptr;
  const T* W2 = static_cast<const T*>(p.W2);
  const T* dS = ws.S.data();
  T* hid = ws.hidC.data();
  T* dact = ws.dactC.data();
  T* dhid = ws.dhidC.data();
  // hidden layer and its derivative, lanes over pairs (kC is a multiple of the
  // vector width: whole vectors are stored, lanes past n are never used)
  for (int64_t r = 0; r < R; ++r) {
    const V ur = ui ? V(ui[r]) : V(T(0));
    for (int64_t cv = 0; cv < n; cv += VS) {
      const int64_t cnt = std::min(VS, n - cv);
      const V pre = te ? ur + load(te + r * kC + cv, cnt) : ur;
      V d;
      Act<A, V>::fwd_grad(pre, d).store(hid + r * kC + cv);
      d.store(dact + r * kC + cv);
    }
  }
  // dhid (R x n) = W2^T (R x H) dS (H x n)
  gemm<T>(R, n, H, T(1), W2, 1, R, dS, kC, false, dhid, kC);
  // dpre = dhid * act'(pre): du (row sums), dt and dE (scattered per pair)
  for (int64_t r = 0; r < R; ++r) {
    T* dr = dhid + r * kC;
    V acc(T(0));
    for (int64_t cv = 0; cv < n; cv += VS) {
      const int64_t cnt = std::min(VS, n - cv);
      const V dpre = V::set(V(T(0)), V::loadu(dr + cv) * V::loadu(dact + r * kC + cv), cnt);
      dpre.store(dr + cv);
      acc = acc + dpre;
    }
    T* du = ws.duacc.data() + r * VS;
    (V::loadu(du) + acc).store(du);
  }
  // one contiguous row of dt / dE per pair (dpre read across the L1-resident chunk)
  for (int64_t c = 0; c < n; ++c) {
    T* dtj = dt_t ? dt_t + (b * p.M + ws.j[c]) * R : nullptr;
    T* dEo = dE_t ? dE_t + ws.orow[c] * R : nullptr;
    for (int64_t r = 0; r < R; ++r) {
      const T g = dhid[r * kC + c];
      if (dtj) dtj[r] += g;
      if (dEo) dEo[r] += g;
    }
  }
  // dW2^T (R x H) += hid (R x n) dS^T (n x H) (dS^T: ws.dST, written by bwd_row);
  // db2 += row sums of dS
  for (int64_t h = 0; h < H; ++h) {
    T s = T(0);
    for (int64_t c = 0; c < n; ++c) s += dS[h * kC + c];
    ws.db2s[h] += s;
  }
  gemm<T>(R, H, n, T(1), hid, kC, 1, ws.dST.data(), H, true, ws.dW2T.data(), H);
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

template <class T, Activation A>
void bwd_row(const SparseBwdParams& bp, int64_t b, int64_t i, Scratch<T>& ws, int64_t tid) {
  const SparseParams& sp = bp.s;
  const KernelParams& p = sp.f;
  const int64_t H = p.H, Dv = p.Dv, Dk = p.Dk, R = p.R, B = p.B, M = p.M;
  const int64_t* rp = sp.row_ptr + b * (p.N + 1);
  // key-major key-side tensors and buffers: (B, M, H, D)
  const T* v = static_cast<const T*>(sp.v_km);
  const T* k = static_cast<const T*>(sp.k_km);
  const T* q = static_cast<const T*>(p.q);
  const T sc = static_cast<T>(p.scale);
  T* dv_t = static_cast<T*>(bp.dv) + tid * B * M * H * Dv;
  T* dk_t = bp.dk ? static_cast<T*>(bp.dk) + tid * B * M * H * Dk : nullptr;
  T* dt_t = bp.dt ? static_cast<T*>(bp.dt) + tid * B * M * R : nullptr;
  T* dE_t = bp.dE ? static_cast<T*>(bp.dE) + tid * p.O * R : nullptr;
  T* dlog_w = bp.dlog_w ? static_cast<T*>(bp.dlog_w) + b * sp.E : nullptr;
  if (p.mlp) std::fill(ws.duacc.begin(), ws.duacc.end(), T(0));
  T* dOr = ws.dOr.data();
  for (int64_t h = 0; h < H; ++h) {
    const int64_t row = (b * H + h) * p.N + i;
    std::copy_n(static_cast<const T*>(bp.dout) + row * Dv, Dv, dOr + h * Dv);
    ws.shiftH[h] = p.softmax ? softmax_bwd_shift(static_cast<const T*>(bp.lse)[row]) : T(0);
    ws.deltaH[h] = p.softmax ? static_cast<const T*>(bp.delta)[row] : T(0);
  }
  for (int64_t e = rp[i], end = rp[i + 1]; e < end;) {
    gather_chunk(sp, b, i, e, end, ws);
    const int64_t n = ws.n;
    if (n == 0) continue;
    chunk_logits<T, A>(sp, b, i, ws);
    // pair by pair, every head at once: the pair's key block of v / dv is contiguous
    // (key-major), and the per-head work is vectorized over the heads
    T* S = ws.S.data();
    for (int64_t c = 0; c < n; ++c) {
      const int64_t j = ws.j[c];
      const T* vj = v + (b * M + j) * H * Dv;
      T* dvj = dv_t + (b * M + j) * H * Dv;
      T* hs = ws.hS.data();
      T* dP = ws.hP.data();
      T* a = ws.hA.data();
      for (int64_t h = 0; h < H; ++h) hs[h] = S[h * kC + c];
      if (Dv == 1) {
        for (int64_t h = 0; h < H; ++h) dP[h] = dOr[h] * vj[h];
      } else {
        for (int64_t h = 0; h < H; ++h) dP[h] = dot(dOr + h * Dv, vj + h * Dv, Dv);
      }
      const T w = p.softmax ? T(1) : pair_weight(ws.lw[c]);
      ws.dlw[c] = pair_head_grads(p.softmax, hs, dP, ws.lw[c], w, ws.shiftH.data(),
                                  ws.deltaH.data(), a, H);
      if (Dv == 1) {
        for (int64_t h = 0; h < H; ++h) dvj[h] += a[h] * dOr[h];
      } else {
        for (int64_t h = 0; h < H; ++h) axpy(a[h], dOr + h * Dv, dvj + h * Dv, Dv);
      }
      for (int64_t h = 0; h < H; ++h) S[h * kC + c] = hs[h];  // dS
      if (p.mlp) std::copy_n(hs, H, ws.dST.data() + c * H);
    }
    // content term: dq_i += s dS k_j (register sums over the pairs), dk_j += s dS q_i
    for (int64_t h = 0; h < H && p.content; ++h) {
      const int64_t row = (b * H + h) * p.N + i;
      const T* Sh = S + h * kC;
      const T* qi = q + row * Dk;
      T* dqi = static_cast<T*>(bp.dq) + row * Dk;
      const T* kh = k + (b * M * H + h) * Dk;
      T* dkh = dk_t + (b * M * H + h) * Dk;
      T sds[kC];
      for (int64_t c = 0; c < n; ++c) {
        sds[c] = sc * Sh[c];
        axpy(sds[c], qi, dkh + ws.j[c] * H * Dk, Dk);
      }
      gather_axpy(sds, ws.j, n, kh, H * Dk, dqi, Dk);
    }
    if (p.mlp) chunk_mlp_backward<T, A>(bp, b, i, ws, dt_t, dE_t);
    if (dlog_w)
      for (int64_t c = 0; c < n; ++c) dlog_w[ws.e[c]] = ws.dlw[c];
  }
  if (p.mlp && bp.du) {
    T* du = static_cast<T*>(bp.du) + (b * p.N + i) * R;
    const int64_t VS = Vectorized<T>::size();
    for (int64_t r = 0; r < R; ++r) du[r] = hsum(Vectorized<T>::loadu(ws.duacc.data() + r * VS));
  }
}

template <class T, Activation A>
void bwd_range(const SparseBwdParams& bp, int64_t begin, int64_t end, int64_t tid) {
  const KernelParams& p = bp.s.f;
  Scratch<T> ws(p, /*backward=*/true);
  for (int64_t row = begin; row < end; ++row) bwd_row<T, A>(bp, row / p.N, row % p.N, ws, tid);
  if (p.mlp) {
    T* dW2 = static_cast<T*>(bp.dW2) + tid * p.H * p.R;
    T* db2 = bp.db2 ? static_cast<T*>(bp.db2) + tid * p.H : nullptr;
    for (int64_t h = 0; h < p.H; ++h) {
      if (db2) db2[h] += ws.db2s[h];
      for (int64_t r = 0; r < p.R; ++r) dW2[h * p.R + r] += ws.dW2T[r * p.H + h];
    }
  }
}

// Activation is a template parameter so the pair loops have no branch on it.
template <class T>
void fwd_dispatch(const SparseParams& p, int64_t begin, int64_t end) {
  ITNET_DISPATCH_ACTIVATION(p.f.activation, A, fwd_range<T, A>(p, begin, end));
}

template <class T>
void bwd_dispatch(const SparseBwdParams& p, int64_t begin, int64_t end, int64_t tid) {
  ITNET_DISPATCH_ACTIVATION(p.s.f.activation, A, bwd_range<T, A>(p, begin, end, tid));
}

}  // namespace

void fwd_f32(const SparseParams& p, int64_t b, int64_t e) { fwd_dispatch<float>(p, b, e); }
void fwd_f64(const SparseParams& p, int64_t b, int64_t e) { fwd_dispatch<double>(p, b, e); }
void bwd_f32(const SparseBwdParams& p, int64_t b, int64_t e, int64_t tid) {
  bwd_dispatch<float>(p, b, e, tid);
}
void bwd_f64(const SparseBwdParams& p, int64_t b, int64_t e, int64_t tid) {
  bwd_dispatch<double>(p, b, e, tid);
}

}  // namespace CPU_CAPABILITY
}  // namespace sparse
}  // namespace itnet
