// Fused CPU backward of the dense integral transform (FlashAttention-2 style:
// items own key tiles, query-side gradients go to per-thread buffers).
// Compiled once per CPU capability (see cpu_tile.h); nothing here touches
// ATen tensors or threads: cpu.cpp fills the params, splits the work into
// items and runs them in parallel.
#include "common/dispatch.h"
#include "dense/cpu_tile.h"

namespace itnet {
namespace dense {
namespace CPU_CAPABILITY {
namespace {
using namespace tile;

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
      for (int64_t h = blk.h0; h < blk.h1; h += 8) {
        const int64_t hh = h - blk.h0;
        const T* dSh = dS + (hh * blk.bq + i) * kBK + jv;
        T* dw = dW2acc + hh * R * VS;
        T* db = db2acc + hh * VS;
        switch (std::min<int64_t>(8, blk.h1 - h)) {
#define ITNET_MLP_CASE(n)                                                                    \
  case n: mlp_heads_bwd<n>(R, hid, dhid, W2 + h * R, dSh, blk.bq * kBK, cnt, dw, db); break;
          ITNET_MLP_CASE(1) ITNET_MLP_CASE(2) ITNET_MLP_CASE(3) ITNET_MLP_CASE(4)
          ITNET_MLP_CASE(5) ITNET_MLP_CASE(6) ITNET_MLP_CASE(7) ITNET_MLP_CASE(8)
#undef ITNET_MLP_CASE
          default: break;
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
  if (p.mlp) {
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
      const unsigned char* sup_h = p.softmax ? nullptr : ws.sup.data() + hh * bq * kBK;
      const T* dO = static_cast<const T*>(bp.dout) + (bh * p.N + i0) * Dv;
      // weights of the block
      if (p.softmax) {
        for (int64_t i = 0; i < bq; ++i)
          row_exp_sum(Sh + i * kBK, P + i * kBK, bk, softmax_bwd_shift(lse[bh * p.N + i0 + i]));
      } else {
        for (int64_t i = 0; i < bq; ++i)
          row_linear_weights(Sh + i * kBK, sup_h + i * kBK, kscale, P + i * kBK, bk);
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
            // the support from Scratch::sup (a pair's logit may be -inf on the support)
            T onv[V::size()];
            for (int64_t e = 0; e < VS; ++e)
              onv[e] = e < cnt && sup_h[i * kBK + jv + e] ? T(1) : T(0);
            const V off = V::loadu(onv) == V(T(0));
            const V s = load(srow + jv, cnt);
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
      if (p.content) {
        const T sc = static_cast<T>(p.scale);
        const T* k = static_cast<const T*>(p.k) + (bh * p.M + j0) * Dk;
        const T* q = static_cast<const T*>(p.q) + (bh * p.N + i0) * Dk;
        gemm<T>(bq, Dk, bk, sc, Sh, kBK, 1, k, Dk, true, dq_t + (bh * p.N + i0) * Dk, Dk);
        T* dk = static_cast<T*>(bp.dk) + (bh * p.M + j0) * Dk;
        gemm<T>(bk, Dk, bq, sc, Sh, 1, kBK, q, Dk, true, dk, Dk);
      }
    }
    if (p.mlp) mlp_backward<T, A>(bp, blk, ws, du_t, dE_t);
  }

  if (p.mlp) {
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
  const int64_t nh = bp.f.mlp ? bp.f.H : 1;
  Scratch<T> ws(bp.f, nh, /*backward=*/true);
  for (int64_t it = begin; it < end; ++it)
    bwd_item<T, A>(bp, decode_item(bp.f, it, ntiles), ws, tid);
}

template <class T>
void bwd_dispatch(const BwdParams& bp, int64_t begin, int64_t end, int64_t tid) {
  ITNET_DISPATCH_ACTIVATION(bp.f.activation, A, bwd_range<T, A>(bp, begin, end, tid));
}

}  // namespace

void bwd_f32(const BwdParams& p, int64_t begin, int64_t end, int64_t tid) {
  bwd_dispatch<float>(p, begin, end, tid);
}
void bwd_f64(const BwdParams& p, int64_t begin, int64_t end, int64_t tid) {
  bwd_dispatch<double>(p, begin, end, tid);
}

}  // namespace CPU_CAPABILITY
}  // namespace dense
}  // namespace itnet
