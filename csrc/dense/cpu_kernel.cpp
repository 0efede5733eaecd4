// Fused CPU kernels of the dense integral transform, forward and backward.
//
// Compiled once per CPU capability (see setup.py / CMakeLists.txt): the
// macro CPU_CAPABILITY names the namespace and selects the width of
// at::vec::Vectorized. Nothing here touches ATen tensors or threads: the
// entry points in cpu.cpp fill the params, split the work into items and run
// them in parallel.
//
// Per (query tile, key tile) the logits of every head in the item's head
// group are built in a small buffer (tile_logits), the same code serving the
// forward and the backward (which recomputes them, FlashAttention style).
// Nothing of size N x M or N x M x R is ever allocated.
#include "dense/cpu_kernel.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "common/math.h"
#include "common/support.h"
#include "dense/cpu_vec.h"

namespace itnet {
namespace dense {
namespace CPU_CAPABILITY {

namespace {

constexpr int64_t kBQ = kCpuBlockQ;
constexpr int64_t kBK = kCpuBlockK;  // also the leading dimension of logit tiles

template <class T>
using Vec = Vectorized<T>;

// Per-thread scratch, sized once per range of items.
template <class T>
struct Scratch {
  std::vector<T> S;      // logits (later dS) of the head group: nh x kBQ x kBK
  std::vector<T> P;      // probabilities of one head: kBQ x kBK
  std::vector<T> dP;     // dO V^T of one head: kBQ x kBK
  std::vector<T> O;      // output accumulators: nh x kBQ x Dv
  std::vector<T> m, l;   // online softmax state: nh x kBQ
  std::vector<T> te;     // t_j + E[o(i, j)] of one query row, transposed: R x kBK
  std::vector<int64_t> erow;  // offset-table row of each key of one query row
  std::vector<T> hid, dact, dhid;  // R vectors each
  std::vector<T> duacc;            // R vectors
  std::vector<T> dW2acc, db2acc;   // nh x R vectors, nh vectors
  std::vector<T> dtT;              // R x kBK
  std::vector<unsigned char> keep;  // window predicate of a tile: kBQ x kBK

  Scratch(const FwdParams& p, int64_t nh, bool backward) {
    const int64_t VS = Vec<T>::size();
    S.resize(nh * kBQ * kBK);
    keep.resize(kBQ * kBK);
    if (p.W2) {
      hid.resize(p.R * VS);
      if (p.E) {
        te.resize(p.R * kBK);
        erow.resize(kBK);
      }
    }
    if (!backward) {
      O.resize(nh * kBQ * p.Dv);
      m.resize(nh * kBQ);
      l.resize(nh * kBQ);
    } else {
      P.resize(kBQ * kBK);
      dP.resize(kBQ * kBK);
      if (p.W2) {
        dact.resize(p.R * VS);
        dhid.resize(p.R * VS);
        duacc.resize(p.R * VS);
        dW2acc.resize(nh * p.R * VS);
        db2acc.resize(nh * VS);
        dtT.resize(p.R * kBK);
      }
    }
  }
};

// One (query tile, key tile) block of a head group.
struct Block {
  int64_t b, h0, h1;  // batch, heads [h0, h1)
  int64_t i0, bq;     // queries [i0, i0 + bq)
  int64_t j0, bk;     // keys [j0, j0 + bk)
  TileWindow rel;     // relation to the window (Inside when there is none)
};

struct ItemCoord {
  int64_t b, h0, h1, tile;
};

inline ItemCoord decode_item(const FwdParams& p, int64_t item, int64_t ntiles) {
  const int64_t groups = cpu_head_groups(p);
  ItemCoord c;
  c.tile = item % ntiles;
  const int64_t g = (item / ntiles) % groups;
  c.b = item / (ntiles * groups);
  c.h0 = groups == 1 ? 0 : g;
  c.h1 = groups == 1 ? p.H : g + 1;
  return c;
}

// Start of key tile j0 / kBK of slab `outer` in a key-tile-transposed
// tensor (outer, nt, C, kBK) (see params.h); rows have leading dim kBK.
template <class T>
inline const T* key_tile(const void* base, int64_t outer, int64_t C, int64_t M, int64_t j0) {
  const int64_t nt = (M + kBK - 1) / kBK;
  return static_cast<const T*>(base) + (outer * nt + j0 / kBK) * C * kBK;
}

inline const double* qpos_of(const FwdParams& p, int64_t b) {
  return p.qpos + b * p.qpos_bstride;
}
inline const double* kpos_of(const FwdParams& p, int64_t b) {
  return p.kpos + b * p.kpos_bstride;
}

template <class T>
inline TileWindow window_relation(const FwdParams& p, int64_t b, int64_t i0, int64_t bq,
                                  int64_t j0, int64_t bk) {
  if (p.window.dims == 0) return TileWindow::Inside;
  const int D = p.window.dims;
  double qlo[kMaxPosDim], qhi[kMaxPosDim], klo[kMaxPosDim], khi[kMaxPosDim];
  position_bbox(qpos_of(p, b) + i0 * D, bq, D, qlo, qhi);
  position_bbox(kpos_of(p, b) + j0 * D, bk, D, klo, khi);
  return classify_tile(p.window, qlo, qhi, klo, khi);
}

// ---------------------------------------------------------------------------
// Row helpers (vector body, scalar tail: the tail must not see padding lanes)

template <class T>
inline T row_max(const T* x, int64_t n) {
  using V = Vec<T>;
  constexpr int64_t VS = V::size();
  T mx = neg_inf<T>();
  int64_t j = 0;
  if (n >= VS) {
    V vm = V::loadu(x);
    for (j = VS; j + VS <= n; j += VS) vm = at::vec::maximum(vm, V::loadu(x + j));
    mx = at::vec::vec_reduce_all<T>([](V& a, V& b) { return at::vec::maximum(a, b); }, vm);
  }
  for (; j < n; ++j) mx = x[j] > mx ? x[j] : mx;
  return mx;
}

// x <- exp(x - shift); returns the sum of the new values.
template <class T>
inline T row_exp_sum(const T* src, T* dst, int64_t n, T shift) {
  using V = Vec<T>;
  constexpr int64_t VS = V::size();
  const V vs(shift);
  V acc(T(0));
  int64_t j = 0;
  for (; j + VS <= n; j += VS) {
    const V e = Ops<V>::exp(V::loadu(src + j) - vs);
    e.store(dst + j);
    acc = acc + e;
  }
  T s = hsum(acc);
  for (; j < n; ++j) {
    dst[j] = Ops<T>::exp(src[j] - shift);
    s += dst[j];
  }
  return s;
}

// `none` normalization: a = l * w on the support, 0 off it (logit -inf).
template <class T>
inline void row_linear_weights(const T* S, const T* kscale, T* A, int64_t n) {
  using V = Vec<T>;
  constexpr int64_t VS = V::size();
  const V ninf(neg_inf<T>());
  for (int64_t j = 0; j < n; j += VS) {
    const int64_t cnt = std::min(VS, n - j);
    const V s = load(S + j, cnt);
    const V w = kscale ? load(kscale + j, cnt) : V(T(1));
    store(V::blendv(s * w, V(T(0)), s == ninf), A + j, cnt);
  }
}

template <class T>
inline void row_add(T* x, const T* y, int64_t n) {
  using V = Vec<T>;
  constexpr int64_t VS = V::size();
  for (int64_t j = 0; j < n; j += VS) {
    const int64_t cnt = std::min(VS, n - j);
    store(load(x + j, cnt) + load(y + j, cnt), x + j, cnt);
  }
}

template <class T>
inline void row_scale(T* x, T a, int64_t n) {
  using V = Vec<T>;
  constexpr int64_t VS = V::size();
  const V va(a);
  for (int64_t j = 0; j < n; j += VS) {
    const int64_t cnt = std::min(VS, n - j);
    store(load(x + j, cnt) * va, x + j, cnt);
  }
}

// ---------------------------------------------------------------------------
// Logits of a block, every head of the group: S[hh][i][j], leading dim kBK.
// Off-support pairs get -inf (in both normalizations; `none` mode maps them
// to weight 0).

// Fills te (R x kBK) with t_j + E[o(i, j)] for query row i, and erow with the
// table row of each key (0 for keys outside the window: their logits are
// masked anyway, and their gradient contributions are exactly 0).
template <class T>
inline void offset_rows(const FwdParams& p, const Block& blk, int64_t i, Scratch<T>& ws) {
  const int D = p.window.dims;
  const double* pq = qpos_of(p, blk.b) + (blk.i0 + i) * D;
  const double* pk = kpos_of(p, blk.b) + blk.j0 * D;
  const T* E = static_cast<const T*>(p.E);
  const T* tT = p.tT ? key_tile<T>(p.tT, blk.b, p.R, p.M, blk.j0) : nullptr;
  for (int64_t j = 0; j < blk.bk; ++j) {
    const double* pkj = pk + j * D;
    ws.erow[j] = window_allows(p.window, pq, pkj) ? offset_row(p.window, pq, pkj) : 0;
  }
  for (int64_t r = 0; r < p.R; ++r) {
    T* dst = ws.te.data() + r * kBK;
    for (int64_t j = 0; j < blk.bk; ++j)
      dst[j] = (tT ? tT[r * kBK + j] : T(0)) + E[ws.erow[j] * p.R + r];
  }
}

// Source of the key-side pre-activation t_j (+ E) for row i: pointer + ld.
template <class T>
inline const T* key_preact(const FwdParams& p, const Block& blk, int64_t i, Scratch<T>& ws,
                           int64_t& ld) {
  if (p.E) {
    offset_rows(p, blk, i, ws);
    ld = kBK;
    return ws.te.data();
  }
  ld = kBK;
  return p.tT ? key_tile<T>(p.tT, blk.b, p.R, p.M, blk.j0) : nullptr;
}

template <class T, Activation A>
void mlp_logits(const FwdParams& p, const Block& blk, T* S, Scratch<T>& ws) {
  using V = Vec<T>;
  constexpr int64_t VS = V::size();
  const int64_t R = p.R;
  const T* W2 = static_cast<const T*>(p.W2);
  const T* b2 = static_cast<const T*>(p.b2);
  const T* u = p.u ? static_cast<const T*>(p.u) + (blk.b * p.N + blk.i0) * R : nullptr;
  T* hid = ws.hid.data();
  for (int64_t i = 0; i < blk.bq; ++i) {
    int64_t tld = 0;
    const T* ts = key_preact(p, blk, i, ws, tld);
    const T* ui = u ? u + i * R : nullptr;
    for (int64_t jv = 0; jv < blk.bk; jv += VS) {
      const int64_t cnt = std::min(VS, blk.bk - jv);
      // hidden layer of 'cnt' pairs (i, j), once for all heads
      for (int64_t r = 0; r < R; ++r) {
        V pre = ui ? V(ui[r]) : V(T(0));
        if (ts) pre = pre + load(ts + r * tld + jv, cnt);
        Act<A, V>::fwd(pre).store(hid + r * VS);
      }
      // projection to the heads (W2 broadcast and hidden lanes both come
      // from L1; the FMA port is the limit either way)
      for (int64_t h = blk.h0; h < blk.h1; ++h) {
        V acc(b2 ? b2[h] : T(0));
        const T* w = W2 + h * R;
        for (int64_t r = 0; r < R; ++r) acc = at::vec::fmadd(V(w[r]), V::loadu(hid + r * VS), acc);
        T* sp = S + ((h - blk.h0) * blk.bq + i) * kBK + jv;
        store(load(sp, cnt) + acc, sp, cnt);
      }
    }
  }
}

template <class T, Activation A>
void tile_logits(const FwdParams& p, const Block& blk, Scratch<T>& ws) {
  const int64_t nh = blk.h1 - blk.h0;
  T* S = ws.S.data();
  const T ninf = neg_inf<T>();
  // content term
  for (int64_t hh = 0; hh < nh; ++hh) {
    T* Sh = S + hh * blk.bq * kBK;
    const int64_t bh = blk.b * p.H + blk.h0 + hh;
    if (p.q) {
      const T* q = static_cast<const T*>(p.q) + (bh * p.N + blk.i0) * p.Dk;
      const T* kT = key_tile<T>(p.kT, bh, p.Dk, p.M, blk.j0);
      gemm<T>(blk.bq, blk.bk, p.Dk, static_cast<T>(p.scale), q, p.Dk, 1, kT, kBK, false, Sh, kBK);
    } else {
      for (int64_t i = 0; i < blk.bq; ++i) std::fill_n(Sh + i * kBK, blk.bk, T(0));
    }
  }
  // MLP term
  if (p.W2) mlp_logits<T, A>(p, blk, S, ws);
  // per-key bias: log w_j (softmax mode) and -inf for padded keys
  if (p.key_bias) {
    const T* kb = static_cast<const T*>(p.key_bias) + blk.b * p.M + blk.j0;
    for (int64_t r = 0; r < nh * blk.bq; ++r) row_add(S + r * kBK, kb, blk.bk);
  }
  // additive attention mask (any broadcast of (B, H, N, M))
  if (p.mask) {
    const T* mk = static_cast<const T*>(p.mask);
    const int64_t* st = p.mask_stride;
    for (int64_t hh = 0; hh < nh; ++hh) {
      const T* mh = mk + blk.b * st[0] + (blk.h0 + hh) * st[1];
      for (int64_t i = 0; i < blk.bq; ++i) {
        const T* mrow = mh + (blk.i0 + i) * st[2] + blk.j0 * st[3];
        T* srow = S + (hh * blk.bq + i) * kBK;
        for (int64_t j = 0; j < blk.bk; ++j) srow[j] += mrow[j * st[3]];
      }
    }
  }
  // causal: keys after the query
  if (p.causal && !causal_tile_full(blk.i0, blk.j0 + blk.bk)) {
    for (int64_t hh = 0; hh < nh; ++hh)
      for (int64_t i = 0; i < blk.bq; ++i) {
        T* srow = S + (hh * blk.bq + i) * kBK;
        for (int64_t j = 0; j < blk.bk; ++j)
          if (!causal_allows(blk.i0 + i, blk.j0 + j)) srow[j] = ninf;
      }
  }
  // window, only for tiles that straddle its border
  if (blk.rel == TileWindow::Partial) {
    const int D = p.window.dims;
    const double* pq = qpos_of(p, blk.b) + blk.i0 * D;
    const double* pk = kpos_of(p, blk.b) + blk.j0 * D;
    unsigned char* keep = ws.keep.data();
    for (int64_t i = 0; i < blk.bq; ++i)
      for (int64_t j = 0; j < blk.bk; ++j)
        keep[i * kBK + j] = window_allows(p.window, pq + i * D, pk + j * D);
    for (int64_t hh = 0; hh < nh; ++hh)
      for (int64_t i = 0; i < blk.bq; ++i) {
        T* srow = S + (hh * blk.bq + i) * kBK;
        for (int64_t j = 0; j < blk.bk; ++j)
          if (!keep[i * kBK + j]) srow[j] = ninf;
      }
  }
}

// ---------------------------------------------------------------------------
// Forward: one item = (batch, head group, query tile); loops over key tiles.

template <class T, Activation A>
void fwd_item(const FwdParams& p, const ItemCoord& c, Scratch<T>& ws) {
  const int64_t i0 = c.tile * kBQ;
  const int64_t bq = std::min(kBQ, p.N - i0);
  const int64_t nh = c.h1 - c.h0;
  const int64_t Dv = p.Dv;
  T* O = ws.O.data();
  T* m = ws.m.data();
  T* l = ws.l.data();
  std::fill_n(O, nh * bq * Dv, T(0));
  std::fill_n(m, nh * bq, neg_inf<T>());
  std::fill_n(l, nh * bq, T(0));
  const T* kscale = p.key_scale ? static_cast<const T*>(p.key_scale) + c.b * p.M : nullptr;

  for (int64_t j0 = 0; j0 < p.M; j0 += kBK) {
    if (p.causal && causal_tile_empty(i0, i0 + bq, j0)) break;
    Block blk{c.b, c.h0, c.h1, i0, bq, j0, std::min(kBK, p.M - j0), TileWindow::Inside};
    blk.rel = window_relation<T>(p, c.b, i0, bq, j0, blk.bk);
    if (blk.rel == TileWindow::Outside) continue;
    tile_logits<T, A>(p, blk, ws);
    for (int64_t hh = 0; hh < nh; ++hh) {
      T* Sh = ws.S.data() + hh * bq * kBK;
      T* Oh = O + hh * bq * Dv;
      const int64_t bh = c.b * p.H + c.h0 + hh;
      if (p.softmax) {
        for (int64_t i = 0; i < bq; ++i) {
          T* srow = Sh + i * kBK;
          T& mi = m[hh * bq + i];
          const T m_new = std::max(mi, row_max(srow, blk.bk));
          const T alpha = softmax_rescale(mi, m_new);
          const T rsum = row_exp_sum(srow, srow, blk.bk, softmax_shift(m_new));
          l[hh * bq + i] = l[hh * bq + i] * alpha + rsum;
          if (alpha != T(1)) row_scale(Oh + i * Dv, alpha, Dv);
          mi = m_new;
        }
      } else {
        for (int64_t i = 0; i < bq; ++i)
          row_linear_weights(Sh + i * kBK, kscale ? kscale + j0 : nullptr, Sh + i * kBK, blk.bk);
      }
      const T* v = static_cast<const T*>(p.v) + (bh * p.M + j0) * Dv;
      gemm<T>(bq, Dv, blk.bk, T(1), Sh, kBK, 1, v, Dv, true, Oh, Dv);
    }
  }

  for (int64_t hh = 0; hh < nh; ++hh) {
    const int64_t bh = c.b * p.H + c.h0 + hh;
    T* out = static_cast<T*>(p.out) + (bh * p.N + i0) * Dv;
    for (int64_t i = 0; i < bq; ++i) {
      const T* orow = O + (hh * bq + i) * Dv;
      if (p.softmax) {
        const T mi = m[hh * bq + i], li = l[hh * bq + i];
        const T inv = softmax_inv_sum(li);
        for (int64_t d = 0; d < Dv; ++d) out[i * Dv + d] = orow[d] * inv;
        static_cast<T*>(p.lse)[bh * p.N + i0 + i] = softmax_lse(mi, li);
      } else {
        std::copy_n(orow, Dv, out + i * Dv);
      }
    }
  }
}

template <class T, Activation A>
void fwd_range(const FwdParams& p, int64_t begin, int64_t end) {
  const int64_t ntiles = (p.N + kBQ - 1) / kBQ;
  const int64_t nh = p.W2 ? p.H : 1;
  Scratch<T> ws(p, nh, /*backward=*/false);
  for (int64_t it = begin; it < end; ++it) fwd_item<T, A>(p, decode_item(p, it, ntiles), ws);
}

// ---------------------------------------------------------------------------
// Backward: one item = (batch, head group, key tile); loops over query tiles.

// Gradient of the MLP term of a block, given dS (the logit gradients of every
// head of the group, in ws.S). Query-side and parameter gradients go to the
// thread's buffers, key-side ones to ws.dtT (owned by the item).
template <class T, Activation A>
void mlp_backward(const BwdParams& bp, const Block& blk, Scratch<T>& ws, T* du_t, T* dE_t) {
  using V = Vec<T>;
  constexpr int64_t VS = V::size();
  const FwdParams& p = bp.f;
  const int64_t R = p.R;
  const T* W2 = static_cast<const T*>(p.W2);
  const T* u = p.u ? static_cast<const T*>(p.u) + (blk.b * p.N + blk.i0) * R : nullptr;
  const T* dS = ws.S.data();
  T* hid = ws.hid.data();
  T* dact = ws.dact.data();
  T* dhid = ws.dhid.data();
  T* duacc = ws.duacc.data();
  T* dW2acc = ws.dW2acc.data();
  T* db2acc = ws.db2acc.data();
  T* dtT = ws.dtT.data();
  T lanes[V::size()];
  for (int64_t i = 0; i < blk.bq; ++i) {
    int64_t tld = 0;
    const T* ts = key_preact(p, blk, i, ws, tld);
    const T* ui = u ? u + i * R : nullptr;
    std::fill_n(duacc, R * VS, T(0));
    for (int64_t jv = 0; jv < blk.bk; jv += VS) {
      const int64_t cnt = std::min(VS, blk.bk - jv);
      for (int64_t r = 0; r < R; ++r) {
        V pre = ui ? V(ui[r]) : V(T(0));
        if (ts) pre = pre + load(ts + r * tld + jv, cnt);
        V d;
        Act<A, V>::fwd_grad(pre, d).store(hid + r * VS);
        d.store(dact + r * VS);
        V(T(0)).store(dhid + r * VS);
      }
      // dhid_r = sum_h W2[h, r] dS_h ; dW2[h, r] += dS_h hid_r ; db2[h] += dS_h
      for (int64_t h = blk.h0; h < blk.h1; ++h) {
        const int64_t hh = h - blk.h0;
        const V ds = load(dS + (hh * blk.bq + i) * kBK + jv, cnt);  // masked lanes: 0
        T* db = db2acc + hh * VS;
        (V::loadu(db) + ds).store(db);
        const T* w = W2 + h * R;
        T* dw = dW2acc + hh * R * VS;
        for (int64_t r = 0; r < R; ++r) {
          at::vec::fmadd(V(w[r]), ds, V::loadu(dhid + r * VS)).store(dhid + r * VS);
          at::vec::fmadd(ds, V::loadu(hid + r * VS), V::loadu(dw + r * VS)).store(dw + r * VS);
        }
      }
      for (int64_t r = 0; r < R; ++r) {
        const V dpre = V::loadu(dhid + r * VS) * V::loadu(dact + r * VS);
        T* du = duacc + r * VS;
        (V::loadu(du) + dpre).store(du);
        T* dt = dtT + r * kBK + jv;
        store(load(dt, cnt) + dpre, dt, cnt);
        if (dE_t) {
          dpre.store(lanes);
          for (int64_t x = 0; x < cnt; ++x) dE_t[ws.erow[jv + x] * R + r] += lanes[x];
        }
      }
    }
    if (du_t) {
      T* dui = du_t + (blk.b * p.N + blk.i0 + i) * R;
      for (int64_t r = 0; r < R; ++r) dui[r] += hsum(V::loadu(duacc + r * VS));
    }
  }
}

template <class T, Activation A>
void bwd_item(const BwdParams& bp, const ItemCoord& c, Scratch<T>& ws, int64_t tid) {
  using V = Vec<T>;
  constexpr int64_t VS = V::size();
  const FwdParams& p = bp.f;
  const int64_t j0 = c.tile * kBK;
  const int64_t bk = std::min(kBK, p.M - j0);
  const int64_t nh = c.h1 - c.h0;
  const int64_t Dk = p.Dk, Dv = p.Dv, R = p.R;

  // this thread's accumulation buffers
  T* dq_t = bp.dq ? static_cast<T*>(bp.dq) + tid * p.B * p.H * p.N * Dk : nullptr;
  T* du_t = bp.du ? static_cast<T*>(bp.du) + tid * p.B * p.N * R : nullptr;
  T* dW2_t = bp.dW2 ? static_cast<T*>(bp.dW2) + tid * p.H * R : nullptr;
  T* db2_t = bp.db2 ? static_cast<T*>(bp.db2) + tid * p.H : nullptr;
  T* dE_t = bp.dE ? static_cast<T*>(bp.dE) + tid * p.O * R : nullptr;
  T* dkw_t = bp.need_dkw ? static_cast<T*>(bp.dkw) + (tid * p.B + c.b) * p.M + j0 : nullptr;
  if (p.W2) {
    std::fill(ws.dW2acc.begin(), ws.dW2acc.end(), T(0));
    std::fill(ws.db2acc.begin(), ws.db2acc.end(), T(0));
    std::fill(ws.dtT.begin(), ws.dtT.end(), T(0));
  }
  const T* kscale = p.key_scale ? static_cast<const T*>(p.key_scale) + c.b * p.M + j0 : nullptr;
  const T* lse = static_cast<const T*>(bp.lse);
  const T* delta = static_cast<const T*>(bp.delta);
  T* P = ws.P.data();
  T* dP = ws.dP.data();

  // causal: only queries i >= j0 see this key tile
  const int64_t i_start = p.causal ? (j0 / kBQ) * kBQ : 0;
  for (int64_t i0 = i_start; i0 < p.N; i0 += kBQ) {
    const int64_t bq = std::min(kBQ, p.N - i0);
    if (p.causal && causal_tile_empty(i0, i0 + bq, j0)) continue;
    Block blk{c.b, c.h0, c.h1, i0, bq, j0, bk, TileWindow::Inside};
    blk.rel = window_relation<T>(p, c.b, i0, bq, j0, bk);
    if (blk.rel == TileWindow::Outside) continue;
    tile_logits<T, A>(p, blk, ws);

    for (int64_t hh = 0; hh < nh; ++hh) {
      const int64_t bh = c.b * p.H + c.h0 + hh;
      T* Sh = ws.S.data() + hh * bq * kBK;
      const T* dO = static_cast<const T*>(bp.dout) + (bh * p.N + i0) * Dv;
      // weights of the block
      if (p.softmax) {
        for (int64_t i = 0; i < bq; ++i)
          row_exp_sum(Sh + i * kBK, P + i * kBK, bk, softmax_bwd_shift(lse[bh * p.N + i0 + i]));
      } else {
        for (int64_t i = 0; i < bq; ++i) row_linear_weights(Sh + i * kBK, kscale, P + i * kBK, bk);
      }
      // dV += P^T dO ;  dP = dO V^T
      T* dv = static_cast<T*>(bp.dv) + (bh * p.M + j0) * Dv;
      gemm<T>(bk, Dv, bq, T(1), P, 1, kBK, dO, Dv, true, dv, Dv);
      const T* vT = key_tile<T>(p.vT, bh, Dv, p.M, j0);
      gemm<T>(bq, bk, Dv, T(1), dO, Dv, 1, vT, kBK, false, dP, kBK);
      // dS (logit gradient), written over the logits; per-key weight gradient
      V kw_acc[kBK / V::size() + 1];
      const int64_t nkv = (bk + VS - 1) / VS;
      for (int64_t x = 0; x < nkv; ++x) kw_acc[x] = V(T(0));
      const V ninf(neg_inf<T>());
      for (int64_t i = 0; i < bq; ++i) {
        T* srow = Sh + i * kBK;
        const T* prow = P + i * kBK;
        const T* dprow = dP + i * kBK;
        const V dl = p.softmax ? V(delta[bh * p.N + i0 + i]) : V(T(0));
        for (int64_t x = 0; x < nkv; ++x) {
          const int64_t jv = x * VS;
          const int64_t cnt = std::min(VS, bk - jv);
          const V dp = load(dprow + jv, cnt);
          V ds;
          if (p.softmax) {
            ds = load(prow + jv, cnt) * (dp - dl);
            kw_acc[x] = kw_acc[x] + ds;  // d / d(log w_j)
          } else {
            const V s = load(srow + jv, cnt);
            const V off = s == ninf;
            const V w = kscale ? load(kscale + jv, cnt) : V(T(1));
            kw_acc[x] = kw_acc[x] + V::blendv(dp * s, V(T(0)), off);  // d / d w_j
            ds = V::blendv(dp * w, V(T(0)), off);
          }
          store(ds, srow + jv, cnt);
        }
      }
      if (dkw_t)
        for (int64_t x = 0; x < nkv; ++x) {
          const int64_t cnt = std::min(VS, bk - x * VS);
          store(load(dkw_t + x * VS, cnt) + kw_acc[x], dkw_t + x * VS, cnt);
        }
      // content term: dq += s dS K ;  dk += s dS^T Q
      if (p.q) {
        const T sc = static_cast<T>(p.scale);
        const T* k = static_cast<const T*>(p.k) + (bh * p.M + j0) * Dk;
        const T* q = static_cast<const T*>(p.q) + (bh * p.N + i0) * Dk;
        gemm<T>(bq, Dk, bk, sc, Sh, kBK, 1, k, Dk, true, dq_t + (bh * p.N + i0) * Dk, Dk);
        T* dk = static_cast<T*>(bp.dk) + (bh * p.M + j0) * Dk;
        gemm<T>(bk, Dk, bq, sc, Sh, 1, kBK, q, Dk, true, dk, Dk);
      }
    }
    if (p.W2) mlp_backward<T, A>(bp, blk, ws, du_t, dE_t);
  }

  if (p.W2) {
    for (int64_t hh = 0; hh < nh; ++hh) {
      const int64_t h = c.h0 + hh;
      if (db2_t) db2_t[h] += hsum(V::loadu(ws.db2acc.data() + hh * VS));
      for (int64_t r = 0; r < R; ++r)
        dW2_t[h * R + r] += hsum(V::loadu(ws.dW2acc.data() + (hh * R + r) * VS));
    }
    if (bp.dt) {
      T* dt = static_cast<T*>(bp.dt) + (c.b * p.M + j0) * R;
      for (int64_t j = 0; j < bk; ++j)
        for (int64_t r = 0; r < R; ++r) dt[j * R + r] += ws.dtT[r * kBK + j];
    }
  }
}

template <class T, Activation A>
void bwd_range(const BwdParams& bp, int64_t begin, int64_t end, int64_t tid) {
  const int64_t ntiles = (bp.f.M + kBK - 1) / kBK;
  const int64_t nh = bp.f.W2 ? bp.f.H : 1;
  Scratch<T> ws(bp.f, nh, /*backward=*/true);
  for (int64_t it = begin; it < end; ++it)
    bwd_item<T, A>(bp, decode_item(bp.f, it, ntiles), ws, tid);
}

// Activation is a template parameter so the pair loop has no branch on it.
template <class T>
void fwd_dispatch(const FwdParams& p, int64_t begin, int64_t end) {
  switch (static_cast<Activation>(p.activation)) {
    case Activation::Relu: return fwd_range<T, Activation::Relu>(p, begin, end);
    case Activation::Gelu: return fwd_range<T, Activation::Gelu>(p, begin, end);
    case Activation::Silu: return fwd_range<T, Activation::Silu>(p, begin, end);
  }
}

template <class T>
void bwd_dispatch(const BwdParams& bp, int64_t begin, int64_t end, int64_t tid) {
  switch (static_cast<Activation>(bp.f.activation)) {
    case Activation::Relu: return bwd_range<T, Activation::Relu>(bp, begin, end, tid);
    case Activation::Gelu: return bwd_range<T, Activation::Gelu>(bp, begin, end, tid);
    case Activation::Silu: return bwd_range<T, Activation::Silu>(bp, begin, end, tid);
  }
}

}  // namespace

const CpuKernelTable& kernel_table() {
  static const CpuKernelTable table{&fwd_dispatch<float>, &fwd_dispatch<double>,
                                    &bwd_dispatch<float>, &bwd_dispatch<double>};
  return table;
}

}  // namespace CPU_CAPABILITY
}  // namespace dense
}  // namespace itnet
