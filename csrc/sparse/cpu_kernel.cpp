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
//
// That is the head-major layout: the logits of one head form a row over the
// chunk's pairs. With the MLP term and many heads (use_pair_major,
// sparse/cpu_chunk.h) the rows are the pairs instead (sparse/cpu_pair_major.h);
// the ranges below pick the layout once per call.
#include "common/cpu_gemm.h"
#include "common/cpu_pair_tile.h"
#include "common/dispatch.h"
#include "sparse/cpu_chunk.h"
#include "sparse/cpu_pair_major.h"

namespace itnet {
namespace sparse {
namespace CPU_CAPABILITY {
namespace {

using namespace itnet::CPU_CAPABILITY::pair_tile;
using itnet::CPU_CAPABILITY::gemm;

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
  const int64_t N = sp.f.N;
  if (use_pair_major(sp.f)) {
    for (int64_t row = begin; row < end; ++row) pm_fwd_row<T, A>(sp, row / N, row % N, ws);
  } else {
    for (int64_t row = begin; row < end; ++row) fwd_row<T, A>(sp, row / N, row % N, ws);
  }
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

template <class T, Activation A>
void bwd_row(const SparseBwdParams& bp, int64_t b, int64_t i, Scratch<T>& ws, int64_t tid) {
  const SparseParams& sp = bp.s;
  const KernelParams& p = sp.f;
  const int64_t H = p.H, Dv = p.Dv, Dk = p.Dk, R = p.R, B = p.B, M = p.M;
  const int64_t* rp = sp.row_ptr + b * (p.N + 1);
  // key-major key-side tensors and buffers: (B, M, H, D)
  const T* v = static_cast<const T*>(sp.v_km);
  T* dv_t = static_cast<T*>(bp.dv) + tid * B * M * H * Dv;
  T* dk_t = bp.dk ? static_cast<T*>(bp.dk) + tid * B * M * H * Dk : nullptr;
  T* dt_t = bp.dt ? static_cast<T*>(bp.dt) + tid * B * M * R : nullptr;
  T* dE_t = bp.dE ? static_cast<T*>(bp.dE) + tid * p.O * R : nullptr;
  T* dlog_w = bp.dlog_w ? static_cast<T*>(bp.dlog_w) + b * sp.E : nullptr;
  if (p.mlp) std::fill(ws.duacc.begin(), ws.duacc.end(), T(0));
  load_row_grads(bp, b, i, ws);
  for (int64_t e = rp[i], end = rp[i + 1]; e < end;) {
    gather_chunk(sp, b, i, e, end, ws);
    const int64_t n = ws.n;
    if (n == 0) continue;
    chunk_logits<T, A>(sp, b, i, ws);
    // pair by pair, every head at once: the pair's key block of v / dv is contiguous
    // (key-major), and the per-head work is vectorized over the heads (the pair's
    // logits are gathered from the head rows into hs, and its dS written back)
    T* S = ws.S.data();
    T* hs = ws.hS.data();
    for (int64_t c = 0; c < n; ++c) {
      const int64_t j = ws.j[c];
      for (int64_t h = 0; h < H; ++h) hs[h] = S[h * kC + c];
      ws.dlw[c] = pair_backward(p, hs, v + (b * M + j) * H * Dv, dv_t + (b * M + j) * H * Dv,
                                ws.lw[c], ws);
      for (int64_t h = 0; h < H; ++h) S[h * kC + c] = hs[h];  // dS
      if (p.mlp) std::copy_n(hs, H, ws.dST.data() + c * H);
    }
    if (p.content) chunk_content_backward(bp, b, i, ws, S, kC, 1, dk_t);
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
  if (use_pair_major(p)) {
    for (int64_t row = begin; row < end; ++row) pm_bwd_row<T, A>(bp, row / p.N, row % p.N, ws, tid);
  } else {
    for (int64_t row = begin; row < end; ++row) bwd_row<T, A>(bp, row / p.N, row % p.N, ws, tid);
  }
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
