// Pair-major rows of the sparse op's CPU kernels: the MLP term with many
// heads (use_pair_major, sparse/cpu_chunk.h), such as a GNO kernel MLP with one
// head per channel (H = C = 64, R = 64, Dv = 1).
//
// The chunk's hidden layer is hid[c][r] (one contiguous row of t, and of the
// offset table, per pair) and its logits are the product
//     S[c][h] = b2[h] + content + sum_r hid[c][r] W2[h][r]
// with the pairs as rows and the heads as columns: one register-blocked GEMM
// (common/cpu_gemm.h) whose B operand, W2^T, stays in L1 for the whole range.
// A pair's row of heads is contiguous, as are its key-major v and dv rows, so
// the weights, dP, dS, dv and dlog_w of a pair are whole-vector operations over
// the heads, and no layout is transposed. The backward is three more GEMMs
// over the chunk: the logits again, dhid = dS W2 and dW2^T += hid^T dS.
//
// Same math as the head-major rows (common/pair_grad.h, common/math.h) in
// another order of the sums: results agree to rounding.
#pragma once

#include "common/cpu_pair_tile.h"
#include "sparse/cpu_chunk.h"

namespace itnet {
namespace sparse {
namespace CPU_CAPABILITY {

using itnet::CPU_CAPABILITY::gemm;

// The chunk's hidden layer hid[c][r] = act(u_i[r] + t_j[r] + E[o][r]) and, with
// kGrad, act' in dactP.
template <class T, Activation A, bool kGrad>
void pm_hidden(const KernelParams& p, int64_t b, int64_t i, Scratch<T>& ws) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  const int64_t R = p.R, n = ws.n;
  const T* t = p.t ? static_cast<const T*>(p.t) + b * p.M * R : nullptr;  // (B, M, R)
  const T* E = static_cast<const T*>(p.E);                                // (O, R)
  const T* ui = p.u ? static_cast<const T*>(p.u) + (b * p.N + i) * R : nullptr;
  for (int64_t c = 0; c < n; ++c) {
    const T* tj = t ? t + ws.j[c] * R : nullptr;
    const T* eo = E ? E + ws.orow[c] * R : nullptr;
    T* hc = ws.hidP.data() + c * R;
    T* dc = kGrad ? ws.dactP.data() + c * R : nullptr;
    for (int64_t r = 0; r < R; r += VS) {
      const int64_t cnt = std::min(VS, R - r);
      V pre = ui ? load(ui + r, cnt) : V(T(0));
      if (tj) pre = pre + load(tj + r, cnt);
      if (eo) pre = pre + load(eo + r, cnt);
      if constexpr (kGrad) {
        V d;
        store(Act<A, V>::fwd_grad(pre, d), hc + r, cnt);
        store(d, dc + r, cnt);
      } else {
        store(Act<A, V>::fwd(pre), hc + r, cnt);
      }
    }
  }
}

// Prefetches the key-side rows (t, v and, in the backward, this thread's dv
// and dt rows) of the first pairs of the next query row, while this row's
// chunk is evaluated: the neighbours of a row are scattered over the keys, and
// without it the hidden layer waits on their rows.
template <class T>
void pm_prefetch_next_row(const SparseParams& sp, int64_t b, int64_t i, const T* dv_t,
                          const T* dt_t) {
#if defined(__GNUC__)
  const KernelParams& p = sp.f;
  if (i + 1 >= p.N) return;
  const int64_t* rp = sp.row_ptr + b * (p.N + 1);
  const int64_t* col = sp.col_idx + b * sp.E;
  const T* t = p.t ? static_cast<const T*>(p.t) + b * p.M * p.R : nullptr;
  const T* v = static_cast<const T*>(sp.v_km) + b * p.M * p.H * p.Dv;
  const int64_t tl = p.R * int64_t(sizeof(T)), vl = p.H * p.Dv * int64_t(sizeof(T));
  const int64_t end = std::min(rp[i + 2], rp[i + 1] + kC);
  for (int64_t e = rp[i + 1]; e < end; ++e) {
    const int64_t j = col[e];
    if (j < 0 || j >= p.M) continue;  // padding entries (absent pairs) may hold any index
    const char* tj = t ? reinterpret_cast<const char*>(t + j * p.R) : nullptr;
    const char* vj = reinterpret_cast<const char*>(v + j * p.H * p.Dv);
    for (int64_t o = 0; tj && o < tl; o += 64) __builtin_prefetch(tj + o, 0, 3);
    for (int64_t o = 0; o < vl; o += 64) __builtin_prefetch(vj + o, 0, 3);
    if (dv_t) {
      const char* dvj = reinterpret_cast<const char*>(dv_t + (b * p.M + j) * p.H * p.Dv);
      for (int64_t o = 0; o < vl; o += 64) __builtin_prefetch(dvj + o, 1, 3);
    }
    if (dt_t) {
      const char* dtj = reinterpret_cast<const char*>(dt_t + (b * p.M + j) * p.R);
      for (int64_t o = 0; o < tl; o += 64) __builtin_prefetch(dtj + o, 1, 3);
    }
  }
#else
  (void)sp, (void)b, (void)i, (void)dv_t, (void)dt_t;
#endif
}

// Logits of the chunk, S[c][h] in ws.SP (leading dimension Hp). The padding
// columns are reset to 0 for every chunk: the whole-vector passes over a row
// (softmax, db2) carry them along, and they must not grow from chunk to chunk.
template <class T, Activation A, bool kGrad>
void pm_logits(const SparseParams& sp, int64_t b, int64_t i, Scratch<T>& ws) {
  const KernelParams& p = sp.f;
  const int64_t H = p.H, Hp = ws.Hp, n = ws.n;
  const T* b2 = static_cast<const T*>(p.b2);
  T* S = ws.SP.data();
  for (int64_t c = 0; c < n; ++c) {
    T* Sc = S + c * Hp;
    if (b2) {
      std::copy_n(b2, H, Sc);
    } else {
      std::fill_n(Sc, H, T(0));
    }
    std::fill(Sc + H, Sc + Hp, T(0));
    if (p.content) {
      const T* q = static_cast<const T*>(p.q);
      const T* kj = static_cast<const T*>(sp.k_km) + (b * p.M + ws.j[c]) * H * p.Dk;
      const T sc = static_cast<T>(p.scale);
      for (int64_t h = 0; h < H; ++h)
        Sc[h] += sc * dot(q + ((b * H + h) * p.N + i) * p.Dk, kj + h * p.Dk, p.Dk);
    }
  }
  pm_hidden<T, A, kGrad>(p, b, i, ws);
  gemm<T>(n, H, p.R, T(1), ws.hidP.data(), p.R, 1, ws.W2T.data(), Hp, /*accumulate=*/true, S, Hp);
}

// out_h += sum_c a[c][h] v_j[h] for the chunk's weights a (ws.SP).
template <class T>
void pm_accumulate_out(const SparseParams& sp, int64_t b, Scratch<T>& ws, T* O) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  const KernelParams& p = sp.f;
  const int64_t H = p.H, Hp = ws.Hp, Dv = p.Dv, n = ws.n;
  const T* v = static_cast<const T*>(sp.v_km) + b * p.M * H * Dv;  // (M, H, Dv)
  const T* S = ws.SP.data();
  if (Dv == 1) {
    // the sum over the pairs in registers, one vector of heads at a time
    for (int64_t h = 0; h < H; h += VS) {
      const int64_t cnt = std::min(VS, H - h);
      V acc = load(O + h, cnt);
      for (int64_t c = 0; c < n; ++c)
        acc = at::vec::fmadd(V::loadu(S + c * Hp + h), load(v + ws.j[c] * H + h, cnt), acc);
      store(acc, O + h, cnt);
    }
    return;
  }
  for (int64_t c = 0; c < n; ++c) {
    const T* vj = v + ws.j[c] * H * Dv;
    const T* Sc = S + c * Hp;
    for (int64_t h = 0; h < H; ++h) axpy(Sc[h], vj + h * Dv, O + h * Dv, Dv);
  }
}

template <class T, Activation A>
void pm_fwd_row(const SparseParams& sp, int64_t b, int64_t i, Scratch<T>& ws) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  const KernelParams& p = sp.f;
  const int64_t H = p.H, Hp = ws.Hp, Dv = p.Dv;
  T* O = ws.O.data();
  std::fill(ws.O.begin(), ws.O.end(), T(0));
  std::fill(ws.m.begin(), ws.m.end(), neg_inf<T>());
  std::fill(ws.l.begin(), ws.l.end(), T(0));
  const int64_t* rp = sp.row_ptr + b * (p.N + 1);
  T* S = ws.SP.data();
  for (int64_t e = rp[i], end = rp[i + 1]; e < end;) {
    gather_chunk(sp, b, i, e, end, ws);
    const int64_t n = ws.n;
    if (n == 0) continue;
    if (e >= end) pm_prefetch_next_row<T>(sp, b, i, nullptr, nullptr);
    pm_logits<T, A, false>(sp, b, i, ws);
    if (p.softmax) {
      // online softmax across chunks, per head, as the head-major rows: the
      // chunk's maxima (vectorized over the heads), the rescale per head, then
      // the exponentials and their sums
      T* mx = ws.hP.data();
      T* shift = ws.shiftH.data();
      for (int64_t h = 0; h < Hp; h += VS) {
        V vm = V::loadu(ws.m.data() + h);
        for (int64_t c = 0; c < n; ++c) {
          const V s = V::loadu(S + c * Hp + h) + V(ws.lw[c]);
          s.store(S + c * Hp + h);
          vm = at::vec::maximum(vm, s);
        }
        vm.store(mx + h);
      }
      for (int64_t h = 0; h < H; ++h) {
        const T alpha = softmax_rescale(ws.m[h], mx[h]);
        ws.l[h] *= alpha;
        if (alpha != T(1)) itnet::CPU_CAPABILITY::pair_tile::row_scale(O + h * Dv, alpha, Dv);
        ws.m[h] = mx[h];
        shift[h] = softmax_shift(mx[h]);
      }
      for (int64_t h = 0; h < Hp; h += VS) {
        const V vs = V::loadu(shift + h);
        V acc(T(0));
        for (int64_t c = 0; c < n; ++c) {
          const V a = Ops<V>::exp(V::loadu(S + c * Hp + h) - vs);
          a.store(S + c * Hp + h);
          acc = acc + a;
        }
        (V::loadu(ws.l.data() + h) + acc).store(ws.l.data() + h);
      }
    } else {
      for (int64_t c = 0; c < n; ++c) {
        T* Sc = S + c * Hp;
        const V w(pair_weight(ws.lw[c]));
        for (int64_t h = 0; h < Hp; h += VS) (V::loadu(Sc + h) * w).store(Sc + h);
      }
    }
    pm_accumulate_out(sp, b, ws, O);
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

// ---------------------------------------------------------------------------
// Backward

// MLP part of the backward of a chunk, given dS in ws.SP (kC x Hp):
//   dhid = dS W2 (n x R), dpre = dhid act'(pre): du (row sum), dt and dE (one
//   contiguous row per pair, scattered into this thread's buffers);
//   dW2^T (R x H) += hid^T dS and db2 += the column sums of dS.
template <class T>
void pm_mlp_backward(const KernelParams& p, int64_t b, Scratch<T>& ws, T* dt_t, T* dE_t) {
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  const int64_t R = p.R, H = p.H, Hp = ws.Hp, n = ws.n;
  const T* dS = ws.SP.data();
  T* dhid = ws.dhidP.data();
  gemm<T>(n, R, H, T(1), dS, Hp, 1, static_cast<const T*>(p.W2), R, /*accumulate=*/false, dhid,
          R);
  T* du = ws.duP.data();
  for (int64_t c = 0; c < n; ++c) {
    const T* dc = dhid + c * R;
    const T* ac = ws.dactP.data() + c * R;
    T* dtj = dt_t ? dt_t + (b * p.M + ws.j[c]) * R : nullptr;
    T* dEo = dE_t ? dE_t + ws.orow[c] * R : nullptr;
    for (int64_t r = 0; r < R; r += VS) {
      const int64_t cnt = std::min(VS, R - r);
      const V g = load(dc + r, cnt) * load(ac + r, cnt);
      store(load(du + r, cnt) + g, du + r, cnt);
      if (dtj) store(load(dtj + r, cnt) + g, dtj + r, cnt);
      if (dEo) store(load(dEo + r, cnt) + g, dEo + r, cnt);
    }
  }
  // db2 over Hp columns (the padding columns are summed and never written out)
  for (int64_t h = 0; h < Hp; h += VS) {
    V acc = V::loadu(ws.db2s.data() + h);
    for (int64_t c = 0; c < n; ++c) acc = acc + V::loadu(dS + c * Hp + h);
    acc.store(ws.db2s.data() + h);
  }
  gemm<T>(R, H, n, T(1), ws.hidP.data(), 1, R, dS, Hp, /*accumulate=*/true, ws.dW2T.data(), H);
}

template <class T, Activation A>
void pm_bwd_row(const SparseBwdParams& bp, int64_t b, int64_t i, Scratch<T>& ws, int64_t tid) {
  const SparseParams& sp = bp.s;
  const KernelParams& p = sp.f;
  const int64_t H = p.H, Hp = ws.Hp, Dv = p.Dv, Dk = p.Dk, R = p.R, B = p.B, M = p.M;
  const int64_t* rp = sp.row_ptr + b * (p.N + 1);
  // key-major key-side tensors and buffers: (B, M, H, D)
  const T* v = static_cast<const T*>(sp.v_km);
  T* dv_t = static_cast<T*>(bp.dv) + tid * B * M * H * Dv;
  T* dk_t = bp.dk ? static_cast<T*>(bp.dk) + tid * B * M * H * Dk : nullptr;
  T* dt_t = bp.dt ? static_cast<T*>(bp.dt) + tid * B * M * R : nullptr;
  T* dE_t = bp.dE ? static_cast<T*>(bp.dE) + tid * p.O * R : nullptr;
  T* dlog_w = bp.dlog_w ? static_cast<T*>(bp.dlog_w) + b * sp.E : nullptr;
  std::fill(ws.duP.begin(), ws.duP.end(), T(0));
  load_row_grads(bp, b, i, ws);
  T* S = ws.SP.data();
  for (int64_t e = rp[i], end = rp[i + 1]; e < end;) {
    gather_chunk(sp, b, i, e, end, ws);
    const int64_t n = ws.n;
    if (n == 0) continue;
    if (e >= end) pm_prefetch_next_row<T>(sp, b, i, dv_t, dt_t);
    pm_logits<T, A, true>(sp, b, i, ws);
    // pair by pair, every head at once: the pair's row of logits (dS on return)
    // and its key block of v / dv are contiguous
    for (int64_t c = 0; c < n; ++c) {
      const int64_t j = ws.j[c];
      ws.dlw[c] = pair_backward(p, S + c * Hp, v + (b * M + j) * H * Dv,
                                dv_t + (b * M + j) * H * Dv, ws.lw[c], ws);
    }
    if (p.content) chunk_content_backward(bp, b, i, ws, S, 1, Hp, dk_t);
    pm_mlp_backward(p, b, ws, dt_t, dE_t);
    if (dlog_w)
      for (int64_t c = 0; c < n; ++c) dlog_w[ws.e[c]] = ws.dlw[c];
  }
  if (bp.du) std::copy_n(ws.duP.data(), R, static_cast<T*>(bp.du) + (b * p.N + i) * R);
}

}  // namespace CPU_CAPABILITY
}  // namespace sparse
}  // namespace itnet
