// Vectorized CPU kernels of the decay scan. Compiled once per CPU capability
// (MULTI_ARCH_SOURCES in setup.py), so Vectorized<T> is that capability's
// widest vector; the lanes run over the state index r.
//
// Forward: per sub-block of channels, one pass over time; the states of the
// sub-block (kCpuSubBlock x Rk) stay in L1 / L2.
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

template <class T>
struct Layout {
  using V = Vectorized<T>;
  static constexpr int64_t VS = V::size();
  int64_t Rk, nv, Rp;  // state size, vectors per state row, padded row length
  explicit Layout(int64_t rk) : Rk(rk), nv((rk + VS - 1) / VS), Rp(nv * VS) {}
  int64_t lanes(int64_t v) const { return Rk - v * VS; }  // valid lanes of vector v
};

// The decay factors e = exp(a) of channel d at step t, vector by vector.
// `row` is the channel's precomputed factors in kStatic mode.
template <class T, int kMode>
struct DecayAt {
  using V = Vectorized<T>;
  const T* base = nullptr;  // kVector: log-decays; kFactored: A row
  T scalar = T(0);          // kScalar: e; kFactored: dt
  const T* row = nullptr;   // kStatic

  DecayAt(const ScanParams& p, int64_t b, int64_t t, int64_t d, const T* static_row) {
    if constexpr (kMode == kStatic) {
      row = static_row;
    } else if constexpr (kMode == kFactored) {
      const auto& s = p.dt_s;
      scalar = static_cast<const T*>(p.dt)[b * s.b + t * s.t + d * s.c];
      base = static_cast<const T*>(p.A) + d * p.A_sd;
    } else {
      const T* ld = static_cast<const T*>(p.log_decay) + b * p.ld_sb + t * p.ld_st + d * p.ld_sd;
      if constexpr (kMode == kScalar) scalar = Ops<T>::exp(ld[0]);
      else base = ld;
    }
  }
  V e(int64_t v, int64_t lanes) const {
    constexpr int64_t VS = V::size();
    if constexpr (kMode == kStatic) return V::loadu(row + v * VS);
    else if constexpr (kMode == kScalar) return V(scalar);
    else if constexpr (kMode == kVector) return Ops<V>::exp(load_n(base + v * VS, lanes));
    else return Ops<V>::exp(V(scalar) * load_n(base + v * VS, lanes));
  }
};

// kStatic: e for channels [s0, s0 + ns) of batch b, rows of Rp (padding e = 1).
template <class T>
void static_decays(const ScanParams& p, const Layout<T>& L, int64_t b, int64_t s0, int64_t ns,
                   T* E) {
  const T* ld = static_cast<const T*>(p.log_decay) + b * p.ld_sb;
  for (int64_t j = 0; j < ns; ++j) {
    for (int64_t r = 0; r < L.Rp; ++r)
      E[j * L.Rp + r] = r < L.Rk ? Ops<T>::exp(ld[(s0 + j) * p.ld_sd + r * p.ld_sr]) : T(1);
  }
}

// h0 (or 0) for channels [s0, s0 + ns) of batch b, rows of Rp (padding 0).
template <class T>
void initial_states(const void* src, const Layout<T>& L, int64_t D, int64_t b, int64_t s0,
                    int64_t ns, T* H) {
  std::fill(H, H + ns * L.Rp, T(0));
  if (!src) return;
  const T* h0 = static_cast<const T*>(src) + (b * D + s0) * L.Rk;
  for (int64_t j = 0; j < ns; ++j) std::copy(h0 + j * L.Rk, h0 + (j + 1) * L.Rk, H + j * L.Rp);
}

template <class T>
inline T at3(const void* base, const Strides3& s, int64_t b, int64_t t, int64_t c) {
  return static_cast<const T*>(base)[b * s.b + t * s.t + c * s.c];
}

template <class T>
inline const T* row4(const void* base, const Strides4& s, int64_t b, int64_t t, int64_t g) {
  return static_cast<const T*>(base) + b * s.b + t * s.t + g * s.g;  // r stride 1
}

// The per-(t, channel) operands are read one sub-block row per step, rows D elements
// apart: several such streams at once (x, dt or the log-decay, y) are more than the
// hardware prefetchers follow, and each load then waits on memory. Every time loop
// therefore asks for the rows kAhead steps ahead (behind, going backwards).
constexpr int64_t kAhead = 8;

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
  const Layout<T> L(p.Rk);
  std::vector<T> H(kCpuSubBlock * L.Rp), E(kMode == kStatic ? kCpuSubBlock * L.Rp : 0);
  const T* skip = static_cast<const T*>(p.skip);
  T* y = static_cast<T*>(p.y);
  T* h_last = static_cast<T*>(p.h_last);
  T* ckpt = static_cast<T*>(p.ckpt);
  const int64_t n_ckpt = num_checkpoints(p.T);

  for (int64_t s0 = it.d0; s0 < it.d1; s0 += kCpuSubBlock) {
    const int64_t ns = std::min(kCpuSubBlock, it.d1 - s0);
    initial_states(p.h0, L, p.D, it.b, s0, ns, H.data());
    if constexpr (kMode == kStatic) static_decays(p, L, it.b, s0, ns, E.data());
    for (int64_t t = 0; t < p.T; ++t) {
      if (ckpt && t % kCkptEvery == 0) {
        for (int64_t j = 0; j < ns; ++j)
          std::copy(H.data() + j * L.Rp, H.data() + j * L.Rp + L.Rk,
                    ckpt + ((it.b * p.D + s0 + j) * n_ckpt + t / kCkptEvery) * L.Rk);
      }
      prefetch_inputs<T, kMode>(p, it.b, t + kAhead, s0, ns);
      if (t + kAhead < p.T)
        prefetch(y + it.b * p.y_s.b + (t + kAhead) * p.y_s.t + s0 * p.y_s.c, ns * sizeof(T), true);
      const T* phi = row4<T>(p.phi, p.phi_s, it.b, t, it.g);
      const T* psi = row4<T>(p.psi, p.psi_s, it.b, t, it.g);
      for (int64_t j = 0; j < ns; ++j) {
        const int64_t d = s0 + j;
        const T xv = at3<T>(p.x, p.x_s, it.b, t, d);
        const DecayAt<T, kMode> dec(p, it.b, t, d, E.data() + j * L.Rp);
        T* h = H.data() + j * L.Rp;
        V acc(T(0));
        for (int64_t v = 0; v < L.nv; ++v) {
          const int64_t n = L.lanes(v);
          const V hv = advance(dec.e(v, n), V::loadu(h + v * VS), load_n(psi + v * VS, n), V(xv));
          hv.store(h + v * VS);
          acc = at::vec::fmadd(load_n(phi + v * VS, n), hv, acc);
        }
        y[it.b * p.y_s.b + t * p.y_s.t + d * p.y_s.c] = hsum(acc) + (skip ? skip[d] * xv : T(0));
      }
    }
    for (int64_t j = 0; j < ns; ++j)
      std::copy(H.data() + j * L.Rp, H.data() + j * L.Rp + L.Rk,
                h_last + (it.b * p.D + s0 + j) * L.Rk);
  }
}

// ----------------------------------------------------------------- backward --
template <class T, int kMode>
void bwd_item(const ScanBwdParams& params, const Item& it) {
  const ScanBwdParams p = params;
  using V = Vectorized<T>;
  constexpr int64_t VS = V::size();
  const Layout<T> L(p.Rk);
  const int64_t T_ = p.T, D = p.D, Rk = p.Rk, Rp = L.Rp;
  // Chunks of kCkptEvery steps, so that the forward's checkpoints (when given) are the
  // chunk starts; sub-blocks of channels small enough for a chunk's states and decays
  // (2 C nsub Rp values) to stay in L2.
  const int64_t C = kCkptEvery;
  const int64_t nsub =
      std::min(std::clamp<int64_t>(32768 / (C * Rp), 1, kCpuSubBlock), it.d1 - it.d0);
  const int64_t nch = (T_ + C - 1) / C;
  const int64_t row = nsub * Rp;  // one step of the sub-block's states

  std::vector<T> ckpt(std::max<int64_t>(nch, 1) * row), Hs(C * row), Es(C * row), Gc(row);
  std::vector<T> Est(kMode == kStatic ? row : 0);
  // per channel of the sub-block at one step: dy, x, dt; the dx and summed-da lanes
  std::vector<T> dy_j(nsub), x_j(nsub), dt_j(nsub);
  std::vector<T> dx_acc(nsub * VS), da_acc(nsub * VS);
  std::vector<T> acc_row(row), acc_ch(nsub);  // per-channel sums (dA or static dld; dskip)
  std::vector<T> acc_static1(nsub);           // static, state-broadcast dld

  const T* skip = static_cast<const T*>(p.skip);
  T* dx = static_cast<T*>(p.dx);
  T* dld = static_cast<T*>(p.dld);
  T* ddt = static_cast<T*>(p.ddt);
  // this item's part of the dphi / dpsi partial sums: rows (t) of G * Rk
  const int64_t part_off = ((it.part * p.B + it.b) * T_ * p.G + it.g) * Rk;
  T* dphi = static_cast<T*>(p.dphi) + part_off;
  T* dpsi = static_cast<T*>(p.dpsi) + part_off;
  const int64_t part_row = p.G * Rk;

  for (int64_t s0 = it.d0; s0 < it.d1; s0 += nsub) {
    const int64_t ns = std::min(nsub, it.d1 - s0);
    if constexpr (kMode == kStatic) static_decays(p, L, it.b, s0, ns, Est.data());

    // checkpoints: the state before step c * C, for every chunk c; the forward's, or
    // from one more pass of the recurrence
    if (p.ckpt_in) {
      const T* src = static_cast<const T*>(p.ckpt_in);
      for (int64_t c = 0; c < nch; ++c)  // (padding lanes stay 0 from the allocation)
        for (int64_t j = 0; j < ns; ++j)
          std::copy_n(src + ((it.b * D + s0 + j) * nch + c) * Rk, Rk,
                      ckpt.data() + c * row + j * Rp);
    } else {
      initial_states(p.h0, L, D, it.b, s0, ns, ckpt.data());
      std::vector<T> H(ckpt.begin(), ckpt.begin() + row);
      for (int64_t t = 0; t < (nch - 1) * C; ++t) {
        prefetch_inputs<T, kMode>(p, it.b, t + kAhead, s0, ns);
        const T* psi = row4<T>(p.psi, p.psi_s, it.b, t, it.g);
        for (int64_t j = 0; j < ns; ++j) {
          const DecayAt<T, kMode> dec(p, it.b, t, s0 + j, Est.data() + j * Rp);
          const V xv(at3<T>(p.x, p.x_s, it.b, t, s0 + j));
          T* h = H.data() + j * Rp;
          for (int64_t v = 0; v < L.nv; ++v) {
            const int64_t n = L.lanes(v);
            advance(dec.e(v, n), V::loadu(h + v * VS), load_n(psi + v * VS, n), xv)
                .store(h + v * VS);
          }
        }
        if ((t + 1) % C == 0) std::copy(H.begin(), H.end(), ckpt.begin() + ((t + 1) / C) * row);
      }
    }

    // the adjoint's carry starts at the final-state cotangent
    std::fill(Gc.begin(), Gc.end(), T(0));
    if (p.dh_last) {
      const T* g = static_cast<const T*>(p.dh_last) + (it.b * D + s0) * Rk;
      for (int64_t j = 0; j < ns; ++j) std::copy(g + j * Rk, g + (j + 1) * Rk, Gc.data() + j * Rp);
    }
    std::fill(acc_row.begin(), acc_row.end(), T(0));
    std::fill(acc_ch.begin(), acc_ch.end(), T(0));
    std::fill(acc_static1.begin(), acc_static1.end(), T(0));

    for (int64_t c = nch - 1; c >= 0; --c) {
      const int64_t t0 = c * C, t1 = std::min(T_, t0 + C);
      // recompute the chunk: Hs[t - t0] = h_t, Es[t - t0] = e_t
      for (int64_t t = t0; t < t1; ++t) {
        // kAhead steps on; past the chunk's end, the first rows of the chunk recomputed next
        // (the one before this)
        const int64_t ahead = t + kAhead < t1 ? t + kAhead : t0 - C + (t + kAhead - t1);
        prefetch_inputs<T, kMode>(p, it.b, ahead, s0, ns);
        const T* psi = row4<T>(p.psi, p.psi_s, it.b, t, it.g);
        const T* prev = t == t0 ? ckpt.data() + c * row : Hs.data() + (t - t0 - 1) * row;
        T* cur = Hs.data() + (t - t0) * row;
        T* ecur = Es.data() + (t - t0) * row;
        for (int64_t j = 0; j < ns; ++j) {
          const DecayAt<T, kMode> dec(p, it.b, t, s0 + j, Est.data() + j * Rp);
          const V xv(at3<T>(p.x, p.x_s, it.b, t, s0 + j));
          for (int64_t v = 0; v < L.nv; ++v) {
            const int64_t n = L.lanes(v), o = j * Rp + v * VS;
            const V e = dec.e(v, n);
            if constexpr (kMode != kStatic) e.store(ecur + o);
            advance(e, V::loadu(prev + o), load_n(psi + v * VS, n), xv).store(cur + o);
          }
        }
      }
      // the adjoint, backwards through the chunk. State vector v outer, channel j inner:
      // phi / psi are loaded once per v and the dphi / dpsi sums over the channels stay in
      // registers (a j-outer order would chain every channel through a store and a load).
      for (int64_t t = t1 - 1; t >= t0; --t) {
        if (t - kAhead >= t0) {  // (the rows of x, dt are in cache from the recompute)
          const int64_t u = t - kAhead;
          prefetch(static_cast<const T*>(p.dy) + it.b * p.dy_s.b + u * p.dy_s.t + s0 * p.dy_s.c,
                   ns * sizeof(T));
          prefetch(dx + it.b * p.dx_s.b + u * p.dx_s.t + s0 * p.dx_s.c, ns * sizeof(T), true);
          if constexpr (kMode == kFactored)
            prefetch(ddt + (it.b * T_ + u) * D + s0, ns * sizeof(T), true);
          else if constexpr (kMode == kScalar)
            prefetch(dld + (it.b * T_ + u) * D + s0, ns * sizeof(T), true);
          else if constexpr (kMode == kVector)
            prefetch(dld + ((it.b * T_ + u) * D + s0) * Rk, ns * Rk * sizeof(T), true);
        }
        const T* phi = row4<T>(p.phi, p.phi_s, it.b, t, it.g);
        const T* psi = row4<T>(p.psi, p.psi_s, it.b, t, it.g);
        const T* prev = t == t0 ? ckpt.data() + c * row : Hs.data() + (t - t0 - 1) * row;
        const T* cur = Hs.data() + (t - t0) * row;
        const T* ecur = kMode == kStatic ? Est.data() : Es.data() + (t - t0) * row;
        for (int64_t j = 0; j < ns; ++j) {
          dy_j[j] = at3<T>(p.dy, p.dy_s, it.b, t, s0 + j);
          x_j[j] = at3<T>(p.x, p.x_s, it.b, t, s0 + j);
          if constexpr (kMode == kFactored) dt_j[j] = at3<T>(p.dt, p.dt_s, it.b, t, s0 + j);
        }
        T* dphi_t = dphi + t * part_row;
        T* dpsi_t = dpsi + t * part_row;
        for (int64_t v = 0; v < L.nv; ++v) {
          const int64_t n = L.lanes(v);
          const V phiv = load_n(phi + v * VS, n), psiv = load_n(psi + v * VS, n);
          V sphi(T(0)), spsi(T(0));
          for (int64_t j = 0; j < ns; ++j) {
            const int64_t o = j * Rp + v * VS;
            const V dyv(dy_j[j]);
            const V g = state_grad(V::loadu(Gc.data() + o), phiv, dyv);
            const V e = V::loadu(ecur + o);
            V dx_v = v == 0 ? psiv * g : at::vec::fmadd(psiv, g, V::loadu(dx_acc.data() + j * VS));
            dx_v.store(dx_acc.data() + j * VS);
            spsi = at::vec::fmadd(g, V(x_j[j]), spsi);
            sphi = at::vec::fmadd(V::loadu(cur + o), dyv, sphi);
            const V da = log_decay_grad(g, e, V::loadu(prev + o));
            T* daj = da_acc.data() + j * VS;
            if constexpr (kMode == kVector) {
              store(da, dld + ((it.b * T_ + t) * D + s0 + j) * Rk + v * VS, n);
            } else if constexpr (kMode == kFactored) {
              const V arow = load_n(static_cast<const T*>(p.A) + (s0 + j) * p.A_sd + v * VS, n);
              (v == 0 ? da * arow : at::vec::fmadd(da, arow, V::loadu(daj))).store(daj);
              at::vec::fmadd(da, V(dt_j[j]), V::loadu(acc_row.data() + o))
                  .store(acc_row.data() + o);
            } else if (kMode == kStatic && p.dld_R == Rk) {  // per state, summed over time
              (V::loadu(acc_row.data() + o) + da).store(acc_row.data() + o);
            } else {  // kScalar, or kStatic with one log-decay for all states: sum over r
              (v == 0 ? da : V::loadu(daj) + da).store(daj);
            }
            carry_back(g, e).store(Gc.data() + o);
          }
          store(load_n(dphi_t + v * VS, n) + sphi, dphi_t + v * VS, n);
          store(load_n(dpsi_t + v * VS, n) + spsi, dpsi_t + v * VS, n);
        }
        for (int64_t j = 0; j < ns; ++j) {
          const int64_t d = s0 + j;
          const T dyv = dy_j[j];
          dx[it.b * p.dx_s.b + t * p.dx_s.t + d * p.dx_s.c] =
              hsum(V::loadu(dx_acc.data() + j * VS)) + (skip ? skip[d] * dyv : T(0));
          if (skip) acc_ch[j] += dyv * x_j[j];
          const T da = hsum(V::loadu(da_acc.data() + j * VS));
          if constexpr (kMode == kScalar || kMode == kFactored)
            (kMode == kScalar ? dld : ddt)[(it.b * T_ + t) * D + d] = da;
          if constexpr (kMode == kStatic) {
            if (p.dld_R != Rk) acc_static1[j] += da;
          }
        }
      }
    }

    // per-channel results of the sub-block
    for (int64_t j = 0; j < ns; ++j) {
      const int64_t d = s0 + j;
      std::copy(Gc.data() + j * Rp, Gc.data() + j * Rp + Rk,
                static_cast<T*>(p.dh0) + (it.b * D + d) * Rk);
      if (skip) static_cast<T*>(p.dskip)[it.b * D + d] = acc_ch[j];
      if constexpr (kMode == kFactored)
        std::copy(acc_row.data() + j * Rp, acc_row.data() + j * Rp + Rk,
                  static_cast<T*>(p.dA) + (it.b * D + d) * Rk);
      if constexpr (kMode == kStatic) {
        if (p.dld_R == Rk)
          std::copy(acc_row.data() + j * Rp, acc_row.data() + j * Rp + Rk,
                    dld + (it.b * D + d) * Rk);
        else
          dld[it.b * D + d] = acc_static1[j];
      }
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
