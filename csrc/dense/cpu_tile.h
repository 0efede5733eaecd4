// The tile machinery shared by the fused CPU forward (cpu_fwd.cpp) and
// backward (cpu_bwd.cpp) kernels of the dense op (the row helpers and the
// pair-MLP register blocks, which the sparse op shares, are in
// common/cpu_pair_tile.h): work-item decoding, scratch buffers and tile_logits, which builds the logits of every head of an
// item's head group for one (query tile, key tile) block. The backward
// recomputes them with the same code, FlashAttention style. Nothing of size
// N x M or N x M x R is ever allocated.
//
// Included only by the per-capability kernel files, which are compiled once
// per CPU capability (see setup.py / CMakeLists.txt): the macro
// CPU_CAPABILITY names the namespace and selects the width of
// at::vec::Vectorized.
#pragma once

#include "dense/cpu_kernel.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "common/activation.h"
#include "common/math.h"
#include "common/support.h"
#include "common/cpu_gemm.h"
#include "common/cpu_pair_tile.h"
#include "common/cpu_vec.h"

namespace itnet {
namespace dense {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;
using itnet::CPU_CAPABILITY::gemm;
using itnet::CPU_CAPABILITY::hsum;
using itnet::CPU_CAPABILITY::load;
using itnet::CPU_CAPABILITY::load_n;
using itnet::CPU_CAPABILITY::store;
using itnet::CPU_CAPABILITY::pair_tile::mlp_heads;
using itnet::CPU_CAPABILITY::pair_tile::mlp_heads_bwd;
using itnet::CPU_CAPABILITY::pair_tile::row_add;
using itnet::CPU_CAPABILITY::pair_tile::row_exp_sum;
using itnet::CPU_CAPABILITY::pair_tile::row_linear_weights;
using itnet::CPU_CAPABILITY::pair_tile::row_max;
using itnet::CPU_CAPABILITY::pair_tile::row_scale;

namespace tile {

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
  // `none` mode: the support of the head group's pairs, nh x kBQ x kBK (1 = on). There the
  // logits keep their own value, -inf included (weight l w = -inf), so the support cannot be
  // marked by a -inf logit as in softmax mode (where a -inf logit is weight 0 either way).
  std::vector<unsigned char> sup;

  Scratch(const FwdParams& p, int64_t nh, bool backward) {
    const int64_t VS = Vec<T>::size();
    S.resize(nh * kBQ * kBK);
    keep.resize(kBQ * kBK);
    if (!p.softmax) sup.resize(nh * kBQ * kBK);
    if (p.mlp) {
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
      if (p.mlp) {
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
// Logits of a block, every head of the group: S[hh][i][j], leading dim kBK.
// Off-support pairs: softmax mode, logit -inf (weight 0); `none` mode, ws.sup
// = 0 (same layout as S) with the logit left as computed, so that a logit that
// is -inf by itself still gives the weight -inf w (the oracle's l w).

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
  const int64_t s_head = blk.bq * kBK;
  T* hid = ws.hid.data();
  for (int64_t i = 0; i < blk.bq; ++i) {
    int64_t tld = 0;
    const T* ts = key_preact(p, blk, i, ws, tld);
    const T* ui = u ? u + i * R : nullptr;
    for (int64_t jv = 0; jv < blk.bk; jv += VS) {
      const int64_t cnt = std::min(VS, blk.bk - jv);
      const T* tj = ts ? ts + jv : nullptr;
      for (int64_t h = blk.h0; h < blk.h1; h += 8) {
        const bool first = h == blk.h0;
        const T* w = W2 + h * R;
        const T* b2h = b2 ? b2 + h : nullptr;
        T* Sh = S + ((h - blk.h0) * blk.bq + i) * kBK + jv;
        switch (std::min<int64_t>(8, blk.h1 - h)) {
#define ITNET_MLP_CASE(n) \
  case n: mlp_heads<n, A>(R, ui, tj, tld, cnt, first, hid, w, b2h, Sh, s_head); break;
          ITNET_MLP_CASE(1) ITNET_MLP_CASE(2) ITNET_MLP_CASE(3) ITNET_MLP_CASE(4)
          ITNET_MLP_CASE(5) ITNET_MLP_CASE(6) ITNET_MLP_CASE(7) ITNET_MLP_CASE(8)
#undef ITNET_MLP_CASE
          default: break;
        }
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
    if (p.content) {
      const T* q = static_cast<const T*>(p.q) + (bh * p.N + blk.i0) * p.Dk;
      const T* kT = key_tile<T>(p.kT, bh, p.Dk, p.M, blk.j0);
      gemm<T>(blk.bq, blk.bk, p.Dk, static_cast<T>(p.scale), q, p.Dk, 1, kT, kBK, false, Sh, kBK);
    } else {
      for (int64_t i = 0; i < blk.bq; ++i) std::fill_n(Sh + i * kBK, blk.bk, T(0));
    }
  }
  // MLP term
  if (p.mlp) mlp_logits<T, A>(p, blk, S, ws);
  // `none` mode: the support apart from the logits (Scratch::sup); softmax mode: -inf logits
  unsigned char* sup = p.softmax ? nullptr : ws.sup.data();
  if (sup) std::fill_n(sup, nh * blk.bq * kBK, static_cast<unsigned char>(1));
  auto drop = [&](int64_t hh, int64_t i, int64_t j) {
    const int64_t at = (hh * blk.bq + i) * kBK + j;
    if (sup)
      sup[at] = 0;
    else
      S[at] = ninf;
  };
  // per-key bias: log w_j (softmax mode) and -inf for padded keys (`none` mode: 0 or -inf)
  if (p.key_bias) {
    const T* kb = static_cast<const T*>(p.key_bias) + blk.b * p.M + blk.j0;
    if (!sup) {
      for (int64_t r = 0; r < nh * blk.bq; ++r) row_add(S + r * kBK, kb, blk.bk);
    } else {
      for (int64_t j = 0; j < blk.bk; ++j)
        if (kb[j] == ninf)
          for (int64_t hh = 0; hh < nh; ++hh)
            for (int64_t i = 0; i < blk.bq; ++i) drop(hh, i, j);
    }
  }
  // additive attention mask (any broadcast of (B, H, N, M)); -inf: off the support
  if (p.mask) {
    const T* mk = static_cast<const T*>(p.mask);
    const int64_t* st = p.mask_stride;
    for (int64_t hh = 0; hh < nh; ++hh) {
      const T* mh = mk + blk.b * st[0] + (blk.h0 + hh) * st[1];
      for (int64_t i = 0; i < blk.bq; ++i) {
        const T* mrow = mh + (blk.i0 + i) * st[2] + blk.j0 * st[3];
        T* srow = S + (hh * blk.bq + i) * kBK;
        if (!sup) {
          for (int64_t j = 0; j < blk.bk; ++j) srow[j] += mrow[j * st[3]];
        } else {
          for (int64_t j = 0; j < blk.bk; ++j) {
            const T m = mrow[j * st[3]];
            if (m == ninf)
              drop(hh, i, j);
            else
              srow[j] += m;
          }
        }
      }
    }
  }
  // causal: keys after the query
  if (p.causal && !causal_tile_full(blk.i0, blk.j0 + blk.bk)) {
    for (int64_t hh = 0; hh < nh; ++hh)
      for (int64_t i = 0; i < blk.bq; ++i)
        for (int64_t j = 0; j < blk.bk; ++j)
          if (!causal_allows(blk.i0 + i, blk.j0 + j)) drop(hh, i, j);
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
      for (int64_t i = 0; i < blk.bq; ++i)
        for (int64_t j = 0; j < blk.bk; ++j)
          if (!keep[i * kBK + j]) drop(hh, i, j);
  }
}

}  // namespace tile
}  // namespace CPU_CAPABILITY
}  // namespace dense
}  // namespace itnet
