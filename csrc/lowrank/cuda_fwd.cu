// CUDA forward of the low-rank op (design in cuda_kernel.h): the key
// stabilizer's exponent max, the key pass (partial S, z per key range) and the
// query pass (out), all fused with the featurization of the rows they read.
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>

#include "lowrank/cuda_common.cuh"
#include "lowrank/cuda_kernel.h"
#include "common/cuda_launch.h"

namespace itnet {
namespace lowrank {
namespace cuda {
namespace {

// ---- exponent max (FAVOR+ Slice stabilizer) ------------------------------------------------------

constexpr int kMaxRows = 64;   // rows per step
constexpr int kMaxFeats = 32;  // features per step
constexpr int64_t kMinMaxRows = 64;

template <class T>
__global__ void __launch_bounds__(kThreads, 2)
    exponent_max_kernel(const T* __restrict__ x, const T* __restrict__ W, int64_t n, int64_t Dk,
                        int64_t F, int64_t splits, T in_scale, T* __restrict__ m_parts) {
  using Tile = FavorTile<T, kMaxRows, kMaxFeats>;
  ITNET_SHARED(typename Tile::Stage, st);
  ITNET_SHARED(T, sq, [kMaxRows]);
  ITNET_SHARED(T, red, [kThreads]);
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t part = blockIdx.x;  // sl * splits + s
  const int64_t sl = part / splits, s = part % splits;
  const int64_t r0 = range_begin(n, splits, s), r1 = range_begin(n, splits, s + 1);
  const T* xs = x + sl * n * Dk;
  T m = neg_inf<T>();
  for (int64_t c0 = r0; c0 < r1; c0 += kMaxRows) {
    const int nrows = static_cast<int>(r1 - c0 < kMaxRows ? r1 - c0 : kMaxRows);
    for (int64_t f0 = 0; f0 < F; f0 += kMaxFeats) {
      T e[Tile::PER];
      Tile::exponents(st, sq, xs + c0 * Dk, nrows, W, F, f0, Dk, in_scale, e);
#pragma unroll
      for (int t = 0; t < Tile::PER; ++t)
        if (Tile::row(t) < nrows && f0 + Tile::feat() < F) m = max_like_std(m, e[t]);
      __syncthreads();  // sq is rewritten by the next exponents() (Dk = 0 has no inner barrier)
    }
  }
  red[tid] = m;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w /= 2) {
    if (tid < w) red[tid] = max_like_std(red[tid], red[tid + w]);
    __syncthreads();
  }
  if (tid == 0) m_parts[part] = red[0];
}

// ---- key pass -----------------------------------------------------------------------------------

constexpr int kKeyRows = 32;  // keys per step
constexpr int kKeyF = 64;     // feature tile
constexpr int kKeyD = 64;     // Dv tile
constexpr int64_t kMinKeys = 128;

template <class T>
struct KeyArgs {
  const T* k;
  const T* v;
  const T* W;
  const T* c;  // (slices,) or null
  T* S_parts;
  T* z_parts;
  int64_t M, Dk, Dv, F, splits, ftiles, dtiles;
  FeatureMap fmap;
  T in_scale, feat_scale;
};

// Thread (ty, tx) = (tid / 16, tid % 16) owns S entries (ty + 16 a, tx + 16 b),
// a, b < 4: the lanes of a warp read two broadcast psi values and 16
// consecutive v values per step (no bank conflicts).
// __launch_bounds__(256, 2) on the tile kernels: with the default bound ptxas
// settles on 64 registers for some of them and spills (key pass float, exponent
// max double); with the 128-register cap none spills (sm_80 and sm_90).
template <class T>
__global__ void __launch_bounds__(kThreads, 2) key_kernel(const KeyArgs<T> a) {
  using Tile = FavorTile<T, kKeyRows, kKeyF>;
  // v_s is staged only after exponents() has returned: it may share the staging buffers
  union StageOrV {
    typename Tile::Stage st;
    T v[kKeyRows * kKeyD];
  };
  ITNET_SHARED(StageOrV, u);
  ITNET_SHARED(T, psi_s, [kKeyRows * kKeyF]);
  ITNET_SHARED(T, sq, [kKeyRows]);
  const int tid = static_cast<int>(threadIdx.x);
  const int ty = tid / 16, tx = tid % 16;
  BlockIndex bi(blockIdx.x);
  const int64_t dt = bi.next(a.dtiles), ft = bi.next(a.ftiles), s = bi.next(a.splits);
  const int64_t sl = bi.rest;
  const int64_t f0 = ft * kKeyF, d0 = dt * kKeyD;
  const int64_t M = a.M, Dk = a.Dk, Dv = a.Dv, F = a.F;
  const int64_t j0 = range_begin(M, a.splits, s), j1 = range_begin(M, a.splits, s + 1);
  const T* kb = a.k + sl * M * Dk;
  const T* vb = a.v + sl * M * Dv;
  const T c = a.c != nullptr ? a.c[sl] : T(0);
  const bool favor = a.fmap == FeatureMap::Favor;
  const bool with_z = dt == 0;

  T acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = T(0);
  T zacc = T(0);

  for (int64_t c0 = j0; c0 < j1; c0 += kKeyRows) {
    const int nrows = static_cast<int>(j1 - c0 < kKeyRows ? j1 - c0 : kKeyRows);
    if (favor) {
      T e[Tile::PER];
      Tile::exponents(u.st, sq, kb + c0 * Dk, nrows, a.W, F, f0, Dk, a.in_scale, e);
#pragma unroll
      for (int t = 0; t < Tile::PER; ++t) {
        const int j = Tile::row(t), f = Tile::feat();
        psi_s[j * kKeyF + f] =
            (j < nrows && f0 + f < F) ? favor_feature(e[t], c, a.feat_scale) : T(0);
      }
    } else {
      // elementwise maps: F = Dk, feature f of key j is fmap(k[j][f])
      for (int idx = tid; idx < kKeyRows * kKeyF; idx += kThreads) {
        const int j = idx / kKeyF, f = idx % kKeyF;
        psi_s[idx] = (j < nrows && f0 + f < F)
                         ? elementwise_feature(a.fmap, kb[(c0 + j) * Dk + f0 + f])
                         : T(0);
      }
    }
    // padding keys get v = 0 as well as psi = 0 (0 * uninitialized could be NaN)
    for (int idx = tid; idx < kKeyRows * kKeyD; idx += kThreads) {
      const int j = idx / kKeyD, d = idx % kKeyD;
      u.v[idx] = (j < nrows && d0 + d < Dv) ? vb[(c0 + j) * Dv + d0 + d] : T(0);
    }
    __syncthreads();
#pragma unroll 4
    for (int j = 0; j < kKeyRows; ++j) {
      T p[4], w[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) p[i] = psi_s[j * kKeyF + ty + 16 * i];
#pragma unroll
      for (int i = 0; i < 4; ++i) w[i] = u.v[j * kKeyD + tx + 16 * i];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int l = 0; l < 4; ++l) acc[i][l] += p[i] * w[l];
    }
    if (with_z && tid < kKeyF) {
      for (int j = 0; j < kKeyRows; ++j) zacc += psi_s[j * kKeyF + tid];
    }
    __syncthreads();  // psi_s and u are refilled by the next step
  }

  const int64_t part = sl * a.splits + s;
  T* Sp = a.S_parts + part * F * Dv;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t f = f0 + ty + 16 * i;
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      const int64_t d = d0 + tx + 16 * l;
      if (f < F && d < Dv) Sp[f * Dv + d] = acc[i][l];
    }
  }
  if (with_z && tid < kKeyF && f0 + tid < F) a.z_parts[part * F + f0 + tid] = zacc;
}

// ---- query pass ---------------------------------------------------------------------------------

constexpr int kQRows = 64;  // queries per block
constexpr int kQF = 32;     // features per step
constexpr int kQD = 64;     // Dv tile
constexpr int kPhiLd = kQF + 1;  // the two rows a warp reads per step fall in different banks

template <class T>
struct QueryArgs {
  const T* q;
  const T* W;
  const T* S;
  const T* z;
  T* out;
  int64_t N, Dk, Dv, F, qtiles, dtiles;
  FeatureMap fmap;
  bool softmax, row_stab;
  T eps, in_scale, feat_scale;
};

template <class T>
__global__ void __launch_bounds__(kThreads, 2) query_kernel(const QueryArgs<T> a) {
  using Tile = FavorTile<T, kQRows, kQF>;
  // the S chunk is staged only after exponents() has returned
  union StageOrS {
    typename Tile::Stage st;
    T S[kQF * kQD];
  };
  ITNET_SHARED(StageOrS, u);
  ITNET_SHARED(T, phi_s, [kQRows * kPhiLd]);
  ITNET_SHARED(T, sq, [kQRows]);
  ITNET_SHARED(T, z_s, [kQF]);
  ITNET_SHARED(T, m_s, [kQRows]);      // running row max of the exponents (row_stab)
  ITNET_SHARED(T, scale_s, [kQRows]);  // per step: rescale factor; at the end: 1 / den
  ITNET_SHARED(T, den_s, [kQRows]);
  const int tid = static_cast<int>(threadIdx.x);
  const int ty = tid / 16, tx = tid % 16;
  BlockIndex bi(blockIdx.x);
  const int64_t dt = bi.next(a.dtiles), qt = bi.next(a.qtiles);
  const int64_t sl = bi.rest;
  const int64_t N = a.N, Dk = a.Dk, Dv = a.Dv, F = a.F;
  const int64_t i0 = qt * kQRows, d0 = dt * kQD;
  const int nrows = static_cast<int>(N - i0 < kQRows ? N - i0 : kQRows);
  const T* qb = a.q + (sl * N + i0) * Dk;
  const T* Sb = a.S + sl * F * Dv;
  const T* zb = a.softmax ? a.z + sl * F : nullptr;
  const bool favor = a.fmap == FeatureMap::Favor;

  if (tid < kQRows) {
    m_s[tid] = neg_inf<T>();
    den_s[tid] = T(0);
    scale_s[tid] = T(1);
  }
  T acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = T(0);
  __syncthreads();

  for (int64_t f0 = 0; f0 < F; f0 += kQF) {
    if (favor) {
      T e[Tile::PER];
      Tile::exponents(u.st, sq, qb, nrows, a.W, F, f0, Dk, a.in_scale, e);
#pragma unroll
      for (int t = 0; t < Tile::PER; ++t) {
        const int i = Tile::row(t), f = Tile::feat();
        const bool valid = i < nrows && f0 + f < F;
        // row_stab: the exponent now, the feature once the row max is known
        phi_s[i * kPhiLd + f] = a.row_stab ? (valid ? e[t] : neg_inf<T>())
                                           : (valid ? favor_feature(e[t], T(0), a.feat_scale)
                                                    : T(0));
      }
    } else {
      for (int idx = tid; idx < kQRows * kQF; idx += kThreads) {
        const int i = idx / kQF, f = idx % kQF;
        phi_s[i * kPhiLd + f] = (i < nrows && f0 + f < F)
                                    ? elementwise_feature(a.fmap, qb[i * Dk + f0 + f])
                                    : T(0);
      }
    }
    for (int idx = tid; idx < kQF * kQD; idx += kThreads) {
      const int f = idx / kQD, d = idx % kQD;
      u.S[idx] = (f0 + f < F && d0 + d < Dv) ? Sb[(f0 + f) * Dv + d0 + d] : T(0);
    }
    if (a.softmax && tid < kQF) z_s[tid] = f0 + tid < F ? zb[f0 + tid] : T(0);
    __syncthreads();

    if (a.row_stab) {
      // online max over the feature chunks: what was summed with the old max
      // is rescaled, so the result is that of the row's overall max
      if (tid < kQRows) {
        T mx = neg_inf<T>();
        for (int f = 0; f < kQF; ++f) mx = max_like_std(mx, phi_s[tid * kPhiLd + f]);
        const T m_old = m_s[tid];
        const T m_new = max_like_std(m_old, mx);
        scale_s[tid] = softmax_rescale(m_old, m_new);
        m_s[tid] = m_new;
      }
      __syncthreads();
#pragma unroll
      for (int t = 0; t < Tile::PER; ++t) {
        const int i = Tile::row(t), f = Tile::feat();
        T* ph = phi_s + i * kPhiLd + f;
        *ph = (i < nrows && f0 + f < F)
                  ? favor_feature(*ph, softmax_shift(m_s[i]), a.feat_scale)
                  : T(0);
      }
      __syncthreads();
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const T sc = scale_s[ty + 16 * i];
#pragma unroll
        for (int l = 0; l < 4; ++l) acc[i][l] *= sc;
      }
    }
    if (a.softmax && tid < kQRows) {
      T dsum = T(0);
      for (int f = 0; f < kQF; ++f) dsum += phi_s[tid * kPhiLd + f] * z_s[f];
      den_s[tid] = (a.row_stab ? den_s[tid] * scale_s[tid] : den_s[tid]) + dsum;
    }
#pragma unroll 4
    for (int f = 0; f < kQF; ++f) {
      T p[4], w[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) p[i] = phi_s[(ty + 16 * i) * kPhiLd + f];
#pragma unroll
      for (int i = 0; i < 4; ++i) w[i] = u.S[f * kQD + tx + 16 * i];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int l = 0; l < 4; ++l) acc[i][l] += p[i] * w[l];
    }
    __syncthreads();  // phi_s, u, z_s, scale_s are rewritten by the next step
  }

  // the divisor of each row: den (kept), 1 (`none` mode), or 0 for a cut row,
  // which outputs 0 (dividing, not multiplying by 1 / den: see feature.h)
  if (tid < kQRows)
    scale_s[tid] = !a.softmax ? T(1) : row_kept(den_s[tid], a.eps) ? den_s[tid] : T(0);
  __syncthreads();
  T* ob = a.out + (sl * N + i0) * Dv;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = ty + 16 * i;
    if (r >= nrows) continue;
    const T div = scale_s[r];
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      const int64_t d = d0 + tx + 16 * l;
      if (d < Dv) ob[r * Dv + d] = div != T(0) ? acc[i][l] / div : T(0);
    }
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

unsigned grid_size(int64_t blocks, const char* what) {
  TORCH_CHECK(blocks <= INT_MAX, "lowrank (CUDA): ", what, " needs ", blocks,
              " blocks, more than a grid holds (2^31 - 1); split the batch");
  return static_cast<unsigned>(blocks);
}

template <class T>
void launch_exponent_max(const FeatureParams& p, int64_t splits, void* m_parts,
                         cudaStream_t stream) {
  const int64_t blocks = p.slices * splits;
  if (blocks == 0) return;
  ITNET_LAUNCH(grid_size(blocks, "exponent_max"), kThreads, 0, stream, exponent_max_kernel<T>)(
      static_cast<const T*>(p.x), static_cast<const T*>(p.W), p.n, p.Dk, p.F, splits,
      favor_input_scale<T>(p.Dk), static_cast<T*>(m_parts));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <class T>
void launch_keys(const LowRankParams& p, const void* c, int64_t splits, void* S_parts,
                 void* z_parts, cudaStream_t stream) {
  KeyArgs<T> a;
  a.k = static_cast<const T*>(p.k);
  a.v = static_cast<const T*>(p.v);
  a.W = static_cast<const T*>(p.W);
  a.c = static_cast<const T*>(c);
  a.S_parts = static_cast<T*>(S_parts);
  a.z_parts = static_cast<T*>(z_parts);
  a.M = p.M;
  a.Dk = p.Dk;
  a.Dv = p.Dv;
  a.F = p.F;
  a.splits = splits;
  a.ftiles = ceil_div(p.F, kKeyF);
  // z is summed by the Dv-tile-0 blocks: keep one Dv tile when Dv = 0
  a.dtiles = std::max<int64_t>(1, ceil_div(p.Dv, kKeyD));
  a.fmap = p.fmap;
  a.in_scale = favor_input_scale<T>(p.Dk);
  a.feat_scale = favor_feature_scale<T>(p.F);
  const int64_t blocks = p.slices() * splits * a.ftiles * a.dtiles;
  if (blocks == 0 || p.M == 0) return;
  ITNET_LAUNCH(grid_size(blocks, "the key pass"), kThreads, 0, stream, key_kernel<T>)(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <class T>
void launch_queries(const LowRankParams& p, const void* S, const void* z, cudaStream_t stream) {
  QueryArgs<T> a;
  a.q = static_cast<const T*>(p.q);
  a.W = static_cast<const T*>(p.W);
  a.S = static_cast<const T*>(S);
  a.z = static_cast<const T*>(z);
  a.out = static_cast<T*>(p.out);
  a.N = p.N;
  a.Dk = p.Dk;
  a.Dv = p.Dv;
  a.F = p.F;
  a.qtiles = ceil_div(p.N, kQRows);
  a.dtiles = ceil_div(p.Dv, kQD);
  a.fmap = p.fmap;
  a.softmax = p.softmax;
  a.row_stab = p.query_stabilizer() == Stabilizer::Row;
  a.eps = static_cast<T>(p.eps);
  a.in_scale = favor_input_scale<T>(p.Dk);
  a.feat_scale = favor_feature_scale<T>(p.F);
  const int64_t blocks = p.slices() * a.qtiles * a.dtiles;
  if (blocks == 0) return;
  ITNET_LAUNCH(grid_size(blocks, "the query pass"), kThreads, 0, stream, query_kernel<T>)(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace cuda

int64_t cuda_max_splits(int64_t slices, int64_t rows, int64_t sm_count) {
  const int64_t target = 4 * std::max<int64_t>(sm_count, 1);
  const int64_t want = cuda::ceil_div(target, std::max<int64_t>(slices, 1));
  const int64_t most = std::max<int64_t>(1, cuda::ceil_div(rows, cuda::kMinMaxRows));
  return std::clamp<int64_t>(want, 1, most);
}

int64_t cuda_key_splits(int64_t slices, int64_t M, int64_t F, int64_t Dv, int64_t sm_count) {
  const int64_t tiles = std::max<int64_t>(1, cuda::ceil_div(F, cuda::kKeyF)) *
                        std::max<int64_t>(1, cuda::ceil_div(Dv, cuda::kKeyD));
  const int64_t target = 4 * std::max<int64_t>(sm_count, 1);
  const int64_t want = cuda::ceil_div(target, std::max<int64_t>(slices, 1) * tiles);
  const int64_t most = std::max<int64_t>(1, cuda::ceil_div(M, cuda::kMinKeys));
  return std::clamp<int64_t>(want, 1, most);
}

void cuda_exponent_max(const FeatureParams& p, int64_t splits, void* m_parts, bool is_double,
                       cudaStream_t stream) {
  if (is_double) cuda::launch_exponent_max<double>(p, splits, m_parts, stream);
  else cuda::launch_exponent_max<float>(p, splits, m_parts, stream);
}

void cuda_keys(const LowRankParams& p, const void* c, int64_t splits, void* S_parts,
               void* z_parts, bool is_double, cudaStream_t stream) {
  if (is_double) cuda::launch_keys<double>(p, c, splits, S_parts, z_parts, stream);
  else cuda::launch_keys<float>(p, c, splits, S_parts, z_parts, stream);
}

void cuda_queries(const LowRankParams& p, const void* S, const void* z, bool is_double,
                  cudaStream_t stream) {
  if (is_double) cuda::launch_queries<double>(p, S, z, stream);
  else cuda::launch_queries<float>(p, S, z, stream);
}

}  // namespace lowrank
}  // namespace itnet
