// Fused CPU forward of the dense integral transform.
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
        const unsigned char* sup = ws.sup.data() + hh * bq * kBK;
        for (int64_t i = 0; i < bq; ++i)
          row_linear_weights(Sh + i * kBK, sup + i * kBK, kscale ? kscale + j0 : nullptr,
                             Sh + i * kBK, blk.bk);
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
  const int64_t nh = p.mlp ? p.H : 1;
  Scratch<T> ws(p, nh, /*backward=*/false);
  for (int64_t it = begin; it < end; ++it) fwd_item<T, A>(p, decode_item(p, it, ntiles), ws);
}

// Activation is a template parameter so the pair loop has no branch on it.
template <class T>
void fwd_dispatch(const FwdParams& p, int64_t begin, int64_t end) {
  ITNET_DISPATCH_ACTIVATION(p.activation, A, fwd_range<T, A>(p, begin, end));
}

}  // namespace

void fwd_f32(const FwdParams& p, int64_t begin, int64_t end) { fwd_dispatch<float>(p, begin, end); }
void fwd_f64(const FwdParams& p, int64_t begin, int64_t end) { fwd_dispatch<double>(p, begin, end); }

}  // namespace CPU_CAPABILITY
}  // namespace dense
}  // namespace itnet
