// Vectorized CPU kernels of the decay scan. Compiled once per CPU capability
// (MULTI_ARCH_SOURCES in setup.py), so Vectorized<T> is that capability's
// widest vector; the lanes run over channels (d), so that the per-(t, d)
// operands x, dt, y, dx, ddt are whole vector loads and stores and no sum over
// lanes is needed per step: y_t = sum_r phi_r h_r is a sum of vectors. (Lanes
// over the state index r, the first layout, paid a horizontal sum per (t, d)
// in the forward and several in the backward: fwd 60 ms, fwd+bwd 170 ms against 36 and
// 134 ms now at B=2, T=4096, D=1024, Rk=16; bench/README, decay-scan section.)
//
// Forward: per sub-block of channels, one pass over time; the states of the
// sub-block (kCpuSubBlock x Rk, r-major: see Block) stay in L1.
// Backward: the adjoint runs from the end, and needs h_{t-1}, h_t and the
// decay e_t at every step. A first forward pass stores the state at the start
// of every chunk of C steps (the checkpoints); then, chunk by chunk from the
// last, the chunk's states and decays are recomputed from its checkpoint into
// a small buffer and the adjoint walks them backwards. Memory: T / C
// checkpoints per sub-block, no (B, T, D, Rk) tensor anywhere; the
// exponentials are paid twice.
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/cpu_vec.h"
#include "scan/cpu_kernel.h"
#include "scan/step.h"

namespace itnet {
namespace scan {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;
using itnet::CPU_CAPABILITY::hsum;
using itnet::CPU_CAPABILITY::load_n;
using itnet::CPU_CAPABILITY::store;

// How the decay of a step is read: the same kernel body, four access paths.
enum Mode : int {
  kStatic = 0,    // Tensor form, constant over time: exp() once per channel
  kScalar = 1,    // Tensor form, one log-decay per (t, d) shared by all r
  kVector = 2,    // Tensor form, one per (t, d, r)
  kFactored = 3,  // dt[b, t, d] * A[d, r]
};

struct Item {
  int64_t b, g, part, d0, d1;
};

Item item_at(const ScanParams& p, const CpuWork& w, int64_t i) {
  Item it;
  it.part = i % w.blocks_per_group;
  i /= w.blocks_per_group;
  it.g = i % p.G;
  it.b = i / p.G;
  it.d0 = it.g * p.group_size + it.part * w.block;
  it.d1 = std::min(it.d0 + w.block, (it.g + 1) * p.group_size);
  return it;
}

// A sub-block: ns channels [s0, s0 + ns) of one group, in nv vectors of VS
// channels (the last one masked). Per-channel state-sized buffers are r-major:
// row r holds the nsp = nv * VS (padded) channels, so that one vector is one
// state index of VS channels. Padding lanes carry x = 0, dy = 0 and e = 1, and
// so stay 0 in every state and adjoint.
template <class T>
struct Block {
  using V = Vectorized<T>;
  static constexpr int64_t VS = V::size();
  int64_t Rk, ns, nv, nsp;
  Block(int64_t rk, int64_t n) : Rk(rk), ns(n), nv((n + VS - 1) / VS), nsp(nv * VS) {}
  int64_t size() const { return Rk * nsp; }
  int64_t lanes(int64_t cv) const { return std::min<int64_t>(VS, ns - cv * VS); }
};

// rows[r][j] <- src[j * sj + r * sr] for the block's channels (padding `pad`)
template <class T>
void gather_rows(const T* src, int64_t sj, int64_t sr, const Block<T>& L, T* rows, T pad) {
  for (int64_t r = 0; r < L.Rk; ++r) {
    T* row = rows + r * L.nsp;
    for (int64_t j = 0; j < L.nsp; ++j) row[j] = j < L.ns ? src[j * sj + r * sr] : pad;
  }
}

// dst[j * sj + r] <- rows[r][j]: back to the (channel, r) layout of the op's tensors
template <class T>
void scatter_rows(const T* rows, const Block<T>& L, T* dst, int64_t sj) {
  for (int64_t j = 0; j < L.ns; ++j)
    for (int64_t r = 0; r < L.Rk; ++r) dst[j * sj + r] = rows[r * L.nsp + j];
}

// h0 (or 0) of the block's channels, r-major rows.
template <class T>
void initial_rows(const void* h0, const Block<T>& L, int64_t D, int64_t b, int64_t s0, T* H) {
  if (h0) gather_rows(static_cast<const T*>(h0) + (b * D + s0) * L.Rk, L.Rk, 1, L, H, T(0));
  else std::fill(H, H + L.size(), T(0));
}

// The decay factors e = exp(a) of the block at step t: at_step(t) once per step, then
// lane(cv) once per channel vector and e(lane, r) per state index.
template <class T, int kMode>
struct Decays {
  using V = Vectorized<T>;
  static constexpr int64_t VS = V::size();
  const ScanParams& p;
  const Block<T>& L;
  int64_t b, s0;
  // kStatic: exp(a), kFactored: A, kVector: the step's log-decays; r-major rows
  std::vector<T> rows;
  const T* step = nullptr;  // kFactored: dt[b, t, s0..]; kScalar: a[b, t, s0..]

  Decays(const ScanParams& p_, const Block<T>& L_, int64_t b_, int64_t s0_)
      : p(p_), L(L_), b(b_), s0(s0_), rows(kMode == kScalar ? 0 : L_.size()) {
    if constexpr (kMode == kStatic) {
      const T* ld = static_cast<const T*>(p.log_decay) + b * p.ld_sb + s0 * p.ld_sd;
      gather_rows(ld, p.ld_sd, p.ld_sr, L, rows.data(), T(0));
      for (T& v : rows) v = Ops<T>::exp(v);  // padding: exp(0) = 1
    } else if constexpr (kMode == kFactored) {
      gather_rows(static_cast<const T*>(p.A) + s0 * p.A_sd, p.A_sd, p.A_sr, L, rows.data(), T(0));
    }
  }
  void at_step(int64_t t) {
    if constexpr (kMode == kFactored) {
      step = static_cast<const T*>(p.dt) + b * p.dt_s.b + t * p.dt_s.t + s0 * p.dt_s.c;
    } else if constexpr (kMode == kScalar) {  // (B|1, T, D, 1) contiguous: ld_sd = 1
      step = static_cast<const T*>(p.log_decay) + b * p.ld_sb + t * p.ld_st + s0;
    } else if constexpr (kMode == kVector) {  // (B|1, T, D, Rk): a transpose per step
      const T* ld = static_cast<const T*>(p.log_decay) + b * p.ld_sb + t * p.ld_st + s0 * p.ld_sd;
      gather_rows(ld, p.ld_sd, p.ld_sr, L, rows.data(), T(0));
    }
  }
  // kFactored: dt of the channels; kScalar: their e (shared by every r)
  V lane(int64_t cv, int64_t cnt) const {
    if constexpr (kMode == kFactored) return load_n(step + cv * VS, cnt);
    else if constexpr (kMode == kScalar) return Ops<V>::exp(load_n(step + cv * VS, cnt));
    else return V(T(0));
  }
  // e of state r: `at` = rows + r * nsp + o (the caller keeps that pointer in a local:
  // after at::vec's may_alias stores, members would be reloaded at every use)
  static V e(const V& lane, const T* at) {
    if constexpr (kMode == kStatic) return V::loadu(at);
    else if constexpr (kMode == kScalar) return lane;
    else if constexpr (kMode == kVector) return Ops<V>::exp(V::loadu(at));
    else return Ops<V>::exp(lane * V::loadu(at));
  }
};

template <class T>
inline const T* row4(const void* base, const Strides4& s, int64_t b, int64_t t, int64_t g) {
  return static_cast<const T*>(base) + b * s.b + t * s.t + g * s.g;  // r stride 1
}

// The per-(t, channel) operands are read one sub-block row per step, rows D elements
// apart: several such streams at once (x, dt or the log-decay, y) are more than the
// hardware prefetchers follow, and each load then waits on memory. Every time loop
// therefore asks for the rows kAhead steps ahead (behind, going backwards).
constexpr int64_t kAhead = 24;

inline void prefetch(const void* ptr, int64_t bytes, bool write = false) {
  const char* a = static_cast<const char*>(ptr);
  for (int64_t o = 0; o < bytes; o += 64) {
    if (write) __builtin_prefetch(a + o, 1);
    else __builtin_prefetch(a + o, 0);
  }
  if (write) __builtin_prefetch(a + bytes - 1, 1);
  else __builtin_prefetch(a + bytes - 1, 0);
}

// The inputs of step t for channels [s0, s0 + ns): x and the decay operands.
template <class T, int kMode>
inline void prefetch_inputs(const ScanParams& p, int64_t b, int64_t t, int64_t s0, int64_t ns) {
  if (t < 0 || t >= p.T) return;
  prefetch(static_cast<const T*>(p.x) + b * p.x_s.b + t * p.x_s.t + s0 * p.x_s.c, ns * sizeof(T));
  if constexpr (kMode == kFactored) {
    prefetch(static_cast<const T*>(p.dt) + b * p.dt_s.b + t * p.dt_s.t + s0 * p.dt_s.c,
             ns * sizeof(T));
  } else if constexpr (kMode == kScalar || kMode == kVector) {
    const int64_t n = kMode == kScalar ? ns : (ns - 1) * p.ld_sd + p.Rk;
    prefetch(static_cast<const T*>(p.log_decay) + b * p.ld_sb + t * p.ld_st + s0 * p.ld_sd,
             n * sizeof(T));
  }
}

// ------------------------------------------------------------------ forward --
// The item functions work on a local copy of the params: at::vec's stores are may_alias
// stores, after which GCC would reload every field of a params struct it only has by
// reference (strides, pointers) at each step.
template <class T, int kMode>
void fwd_item(const ScanParams& params, const Item& it) {
  const ScanParams p = params;
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  const int64_t Rk = p.Rk;
  const T* skip = static_cast<const T*>(p.skip);
  T* y = static_cast<T*>(p.y);
  T* ckpt = static_cast<T*>(p.ckpt);
  const int64_t n_ckpt = num_checkpoints(p.T);

  for (int64_t s0 = it.d0; s0 < it.d1; s0 += kCpuSubBlock) {
    const Block<T> L(Rk, std::min(kCpuSubBlock, it.d1 - s0));
    const int64_t nsp = L.nsp;
    std::vector<T> H(L.size());
    initial_rows(p.h0, L, p.D, it.b, s0, H.data());
    Decays<T, kMode> dec(p, L, it.b, s0);
    T* const Hp = H.data();
    const T* const rows = dec.rows.data();
    for (int64_t t = 0; t < p.T; ++t) {
      if (ckpt && t % kCkptEvery == 0)
        scatter_rows(H.data(), L, ckpt + ((it.b * p.D + s0) * n_ckpt + t / kCkptEvery) * Rk,
                     n_ckpt * Rk);
      prefetch_inputs<T, kMode>(p, it.b, t + kAhead, s0, L.ns);
      if (t + kAhead < p.T)
        prefetch(y + it.b * p.y_s.b + (t + kAhead) * p.y_s.t + s0 * p.y_s.c, L.ns * sizeof(T),
                 true);
      dec.at_step(t);
      const T* phi = row4<T>(p.phi, p.phi_s, it.b, t, it.g);
      const T* psi = row4<T>(p.psi, p.psi_s, it.b, t, it.g);
      const T* xr = static_cast<const T*>(p.x) + it.b * p.x_s.b + t * p.x_s.t + s0;
      T* yr = y + it.b * p.y_s.b + t * p.y_s.t + s0;
      for (int64_t cv = 0; cv < L.nv; ++cv) {
        const int64_t o = cv * VS, cnt = L.lanes(cv);
        const V xv = load_n(xr + o, cnt);
        const V ln = dec.lane(cv, cnt);
        V acc = skip ? load_n(skip + s0 + o, cnt) * xv : V(T(0));
        T* h = Hp + o;
        const T* er = rows + o;
        for (int64_t r = 0; r < Rk; ++r) {
          const V hv = advance(Decays<T, kMode>::e(ln, er + r * nsp), V::loadu(h + r * nsp),
                               V(psi[r]), xv);
          hv.store(h + r * nsp);
          acc = at::vec::fmadd(V(phi[r]), hv, acc);
        }
        store(acc, yr + o, cnt);
      }
    }
    scatter_rows(H.data(), L, static_cast<T*>(p.h_last) + (it.b * p.D + s0) * Rk, Rk);
  }
}

// ----------------------------------------------------------------- backward --
template <class T, int kMode>
void bwd_item(const ScanBwdParams& params, const Item& it) {
  const ScanBwdParams p = params;
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  const int64_t T_ = p.T, D = p.D, Rk = p.Rk;
  // Chunks of kCkptEvery steps, so that the forward's checkpoints (when given) are the
  // chunk starts; sub-blocks of channels small enough for a chunk's states and decays
  // (2 C nsub Rk values) to stay in L2, whole vectors where the block allows.
  const int64_t C = kCkptEvery;
  int64_t nsub = std::min(std::clamp<int64_t>(131072 / (C * Rk), 1, kCpuSubBlock), it.d1 - it.d0);
  if (nsub > VS) nsub -= nsub % VS;
  const int64_t nch = (T_ + C - 1) / C;
  constexpr bool kStoreE = kMode != kStatic;
  const bool static_per_state = kMode == kStatic && p.dld_R == Rk;

  const T* skip = static_cast<const T*>(p.skip);
  T* dx = static_cast<T*>(p.dx);
  T* dld = static_cast<T*>(p.dld);
  T* ddt = static_cast<T*>(p.ddt);
  // this item's part of the dphi / dpsi partial sums: rows (t) of G * Rk
  const int64_t part_off = ((it.part * p.B + it.b) * T_ * p.G + it.g) * Rk;
  T* dphi = static_cast<T*>(p.dphi) + part_off;
  T* dpsi = static_cast<T*>(p.dpsi) + part_off;
  const int64_t part_row = p.G * Rk;
  std::vector<T> sphi(Rk * VS), spsi(Rk * VS);  // per-state sums over the channels at one step

  for (int64_t s0 = it.d0; s0 < it.d1; s0 += nsub) {
    const Block<T> L(Rk, std::min(nsub, it.d1 - s0));
    const int64_t nsp = L.nsp, row = L.size();
    Decays<T, kMode> dec(p, L, it.b, s0);
    std::vector<T> ckpt(std::max<int64_t>(nch, 1) * row), Hs(C * row), Es(kStoreE ? C * row : 0);
    std::vector<T> Gc(row), dacc(row, T(0));   // the carry; dA (factored) or per-state dld
    std::vector<T> dacc1(nsp, T(0)), dskip(nsp, T(0));  // state-broadcast static dld; dskip

    // checkpoints: the state before step c * C, for every chunk c; the forward's, or
    // from one more pass of the recurrence
    if (p.ckpt_in) {
      const T* src = static_cast<const T*>(p.ckpt_in) + (it.b * D + s0) * nch * Rk;
      for (int64_t c = 0; c < nch; ++c)
        gather_rows(src + c * Rk, nch * Rk, 1, L, ckpt.data() + c * row, T(0));
    } else {
      initial_rows(p.h0, L, D, it.b, s0, ckpt.data());
      std::vector<T> H(ckpt.begin(), ckpt.begin() + row);
      T* const Hp = H.data();
      const T* const rows = dec.rows.data();
      for (int64_t t = 0; t < (nch - 1) * C; ++t) {
        prefetch_inputs<T, kMode>(p, it.b, t + kAhead, s0, L.ns);
        dec.at_step(t);
        const T* psi = row4<T>(p.psi, p.psi_s, it.b, t, it.g);
        const T* xr = static_cast<const T*>(p.x) + it.b * p.x_s.b + t * p.x_s.t + s0;
        for (int64_t cv = 0; cv < L.nv; ++cv) {
          const int64_t o = cv * VS, cnt = L.lanes(cv);
          const V xv = load_n(xr + o, cnt), ln = dec.lane(cv, cnt);
          for (int64_t r = 0; r < Rk; ++r) {
            T* h = Hp + r * nsp + o;
            advance(Decays<T, kMode>::e(ln, rows + r * nsp + o), V::loadu(h), V(psi[r]), xv)
                .store(h);
          }
        }
        if ((t + 1) % C == 0) std::copy(H.begin(), H.end(), ckpt.begin() + ((t + 1) / C) * row);
      }
    }

    // the adjoint's carry starts at the final-state cotangent
    if (p.dh_last)
      gather_rows(static_cast<const T*>(p.dh_last) + (it.b * D + s0) * Rk, Rk, 1, L, Gc.data(),
                  T(0));
    else
      std::fill(Gc.begin(), Gc.end(), T(0));

    // raw pointers in locals (see Decays::e)
    T* const Gp = Gc.data();
    T* const dap = dacc.data();
    T* const sphip = sphi.data();
    T* const spsip = spsi.data();
    T* const rows = dec.rows.data();
    for (int64_t c = nch - 1; c >= 0; --c) {
      const int64_t t0 = c * C, t1 = std::min(T_, t0 + C);
      // recompute the chunk: Hs[t - t0] = h_t, Es[t - t0] = e_t
      for (int64_t t = t0; t < t1; ++t) {
        // kAhead steps on; past the chunk's end, the first rows of the chunk recomputed next
        // (the one before this)
        const int64_t ahead = t + kAhead < t1 ? t + kAhead : t0 - C + (t + kAhead - t1);
        prefetch_inputs<T, kMode>(p, it.b, ahead, s0, L.ns);
        dec.at_step(t);
        const T* psi = row4<T>(p.psi, p.psi_s, it.b, t, it.g);
        const T* xr = static_cast<const T*>(p.x) + it.b * p.x_s.b + t * p.x_s.t + s0;
        const T* prev = t == t0 ? ckpt.data() + c * row : Hs.data() + (t - t0 - 1) * row;
        T* cur = Hs.data() + (t - t0) * row;
        T* ecur = kStoreE ? Es.data() + (t - t0) * row : nullptr;
        for (int64_t cv = 0; cv < L.nv; ++cv) {
          const int64_t o = cv * VS, cnt = L.lanes(cv);
          const V xv = load_n(xr + o, cnt), ln = dec.lane(cv, cnt);
          for (int64_t r = 0; r < Rk; ++r) {
            const int64_t k = r * nsp + o;
            const V e = Decays<T, kMode>::e(ln, rows + k);
            if constexpr (kStoreE) e.store(ecur + k);
            advance(e, V::loadu(prev + k), V(psi[r]), xv).store(cur + k);
          }
        }
      }
      // the adjoint, backwards through the chunk
      for (int64_t t = t1 - 1; t >= t0; --t) {
        const int64_t td = (it.b * T_ + t) * D + s0;  // (b, t, s0) of the (B, T, D) gradients
        if (t - kAhead >= t0) {  // (the rows of x, dt are in cache from the recompute)
          const int64_t u = t - kAhead, ud = (it.b * T_ + u) * D + s0;
          prefetch(static_cast<const T*>(p.dy) + it.b * p.dy_s.b + u * p.dy_s.t + s0 * p.dy_s.c,
                   L.ns * sizeof(T));
          prefetch(dx + it.b * p.dx_s.b + u * p.dx_s.t + s0 * p.dx_s.c, L.ns * sizeof(T), true);
          if constexpr (kMode == kFactored) prefetch(ddt + ud, L.ns * sizeof(T), true);
          else if constexpr (kMode == kScalar) prefetch(dld + ud, L.ns * sizeof(T), true);
          else if constexpr (kMode == kVector) prefetch(dld + ud * Rk, L.ns * Rk * sizeof(T), true);
        }
        const T* phi = row4<T>(p.phi, p.phi_s, it.b, t, it.g);
        const T* psi = row4<T>(p.psi, p.psi_s, it.b, t, it.g);
        const T* prev = t == t0 ? ckpt.data() + c * row : Hs.data() + (t - t0 - 1) * row;
        const T* cur = Hs.data() + (t - t0) * row;
        const T* ecur = kStoreE ? Es.data() + (t - t0) * row : rows;
        // kVector: the step's log-decay gradients gather in the (now unused) rows of dec
        T* da_rows = kMode == kVector ? rows : nullptr;
        const T* dyr = static_cast<const T*>(p.dy) + it.b * p.dy_s.b + t * p.dy_s.t + s0;
        const T* xr = static_cast<const T*>(p.x) + it.b * p.x_s.b + t * p.x_s.t + s0;
        T* dxr = dx + it.b * p.dx_s.b + t * p.dx_s.t + s0;
        if constexpr (kMode == kFactored) dec.at_step(t);  // dec.step = dt of the step
        std::fill(sphip, sphip + Rk * VS, T(0));
        std::fill(spsip, spsip + Rk * VS, T(0));
        for (int64_t cv = 0; cv < L.nv; ++cv) {
          const int64_t o = cv * VS, cnt = L.lanes(cv);
          const V dyv = load_n(dyr + o, cnt), xv = load_n(xr + o, cnt);
          const V dtv = kMode == kFactored ? dec.lane(cv, cnt) : V(T(0));
          V dxv = skip ? load_n(skip + s0 + o, cnt) * dyv : V(T(0));
          V dav(T(0));  // the channel's log-decay gradient summed over r (times A: factored)
          for (int64_t r = 0; r < Rk; ++r) {
            const int64_t k = r * nsp + o;
            const V g = state_grad(V::loadu(Gp + k), V(phi[r]), dyv);
            const V e = V::loadu(ecur + k);
            dxv = at::vec::fmadd(V(psi[r]), g, dxv);
            T* sp = spsip + r * VS;
            at::vec::fmadd(g, xv, V::loadu(sp)).store(sp);
            T* sf = sphip + r * VS;
            at::vec::fmadd(V::loadu(cur + k), dyv, V::loadu(sf)).store(sf);
            const V da = log_decay_grad(g, e, V::loadu(prev + k));
            if constexpr (kMode == kFactored) {
              dav = at::vec::fmadd(da, V::loadu(rows + k), dav);
              at::vec::fmadd(da, dtv, V::loadu(dap + k)).store(dap + k);
            } else if constexpr (kMode == kVector) {
              da.store(da_rows + k);
            } else if (kMode == kStatic && static_per_state) {
              (V::loadu(dap + k) + da).store(dap + k);
            } else {  // kScalar, or kStatic with one log-decay for all states
              dav = dav + da;
            }
            carry_back(g, e).store(Gp + k);
          }
          store(dxv, dxr + o, cnt);
          if constexpr (kMode == kFactored) store(dav, ddt + td + o, cnt);
          if constexpr (kMode == kScalar) store(dav, dld + td + o, cnt);
          if constexpr (kMode == kStatic) {
            if (!static_per_state) (V::loadu(dacc1.data() + o) + dav).store(dacc1.data() + o);
          }
          if (skip) at::vec::fmadd(dyv, xv, V::loadu(dskip.data() + o)).store(dskip.data() + o);
        }
        if constexpr (kMode == kVector) scatter_rows(da_rows, L, dld + td * Rk, Rk);
        T* dphi_t = dphi + t * part_row;
        T* dpsi_t = dpsi + t * part_row;
        for (int64_t r = 0; r < Rk; ++r) {
          dphi_t[r] += hsum(V::loadu(sphip + r * VS));
          dpsi_t[r] += hsum(V::loadu(spsip + r * VS));
        }
      }
    }

    // per-channel results of the sub-block
    scatter_rows(Gc.data(), L, static_cast<T*>(p.dh0) + (it.b * D + s0) * Rk, Rk);
    if (skip) std::copy_n(dskip.data(), L.ns, static_cast<T*>(p.dskip) + it.b * D + s0);
    if constexpr (kMode == kFactored)
      scatter_rows(dacc.data(), L, static_cast<T*>(p.dA) + (it.b * D + s0) * Rk, Rk);
    if constexpr (kMode == kStatic) {
      if (static_per_state) scatter_rows(dacc.data(), L, dld + (it.b * D + s0) * Rk, Rk);
      else std::copy_n(dacc1.data(), L.ns, dld + it.b * D + s0);
    }
  }
}

int mode_of(const ScanParams& p) {
  if (p.form == DecayForm::Factored) return kFactored;
  if (p.ld_st == 0) return kStatic;
  return p.ld_sr == 0 ? kScalar : kVector;
}

template <class T>
void fwd_range(const ScanParams& p, const CpuWork& w, int64_t begin, int64_t end) {
  const int mode = mode_of(p);
  for (int64_t i = begin; i < end; ++i) {
    const Item it = item_at(p, w, i);
    switch (mode) {
      case kStatic: fwd_item<T, kStatic>(p, it); break;
      case kScalar: fwd_item<T, kScalar>(p, it); break;
      case kVector: fwd_item<T, kVector>(p, it); break;
      default: fwd_item<T, kFactored>(p, it); break;
    }
  }
}

template <class T>
void bwd_range(const ScanBwdParams& p, const CpuWork& w, int64_t begin, int64_t end) {
  const int mode = mode_of(p);
  for (int64_t i = begin; i < end; ++i) {
    const Item it = item_at(p, w, i);
    switch (mode) {
      case kStatic: bwd_item<T, kStatic>(p, it); break;
      case kScalar: bwd_item<T, kScalar>(p, it); break;
      case kVector: bwd_item<T, kVector>(p, it); break;
      default: bwd_item<T, kFactored>(p, it); break;
    }
  }
}

void fwd_f32(const ScanParams& p, const CpuWork& w, int64_t b, int64_t e) {
  fwd_range<float>(p, w, b, e);
}
void fwd_f64(const ScanParams& p, const CpuWork& w, int64_t b, int64_t e) {
  fwd_range<double>(p, w, b, e);
}
void bwd_f32(const ScanBwdParams& p, const CpuWork& w, int64_t b, int64_t e) {
  bwd_range<float>(p, w, b, e);
}
void bwd_f64(const ScanBwdParams& p, const CpuWork& w, int64_t b, int64_t e) {
  bwd_range<double>(p, w, b, e);
}

}  // namespace CPU_CAPABILITY
}  // namespace scan
}  // namespace itnet
