// Tiles of the flash kernels: shared-memory staging of row blocks and the
// register fragments of the m16n8k16 MMA (mma.cuh).
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with 16-bit inputs), with
// g = lane / 4 and c = lane % 4:
//   A 16x16 (row major), 4 registers of two elements:
//     a[0] = (row g,     cols 2c, 2c+1)   a[1] = (row g + 8, cols 2c, 2c+1)
//     a[2] = (row g,     cols 2c+8, +9)   a[3] = (row g + 8, cols 2c+8, +9)
//   B 16x8 (k x n), 2 registers: b[0] = (k 2c, 2c+1; n g), b[1] = (k 2c+8, +9; n g)
//   C 16x8 fp32, 4 registers: c[e] = (row g + 8 (e / 2), col 2c + e % 2)
// so the fp32 accumulators of two neighbouring 16x8 tiles, packed to 16 bit,
// are exactly the A fragment of the next product (P V after Q K^T): the
// probabilities never leave registers.
//
// Shared-memory tiles are row major with rows padded by 8 elements (16 bytes),
// which makes the 8 row addresses of every ldmatrix fall in distinct banks.
#pragma once

#include <cstdint>

#include "dense/flash/mma.cuh"

namespace itnet {
namespace dense {
namespace flash {

constexpr int kWarp = 32;

// Row / column of accumulator element e of a C fragment (tile-local).
__device__ __forceinline__ int acc_row(int lane, int e) { return (lane >> 2) + 8 * (e >> 1); }
__device__ __forceinline__ int acc_col(int lane, int e) { return 2 * (lane & 3) + (e & 1); }

// A fragment of the 16x16 block at (row0, col0) of a row-major tile.
template <class T>
__device__ __forceinline__ void frag_a(uint32_t (&a)[4], const T* s, int ld, int row0, int col0,
                                       int lane) {
  ldsm_x4(a, s + (row0 + (lane & 15)) * ld + col0 + (lane >> 4) * 8);
}

// B fragments of two n-tiles (n0 and n0 + 8) for the k-step at k0, from a
// tile that stores B transposed (row n holds B[:, n], e.g. K for Q K^T):
// b[0], b[1] for n-tile n0, b[2], b[3] for n-tile n0 + 8.
template <class T>
__device__ __forceinline__ void frag_b_nk(uint32_t (&b)[4], const T* s, int ld, int n0, int k0,
                                          int lane) {
  ldsm_x4(b, s + (n0 + (lane & 7) + (lane >> 4) * 8) * ld + k0 + ((lane >> 3) & 1) * 8);
}

// The same two n-tiles from a tile that stores B as is (row k holds B[k, :],
// e.g. V for P V), transposed on the fly by ldmatrix.trans.
template <class T>
__device__ __forceinline__ void frag_b_kn(uint32_t (&b)[4], const T* s, int ld, int k0, int n0,
                                          int lane) {
  ldsm_x4_trans(b, s + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0 + (lane >> 4) * 8);
}

// A fragment from the fp32 accumulators of the n-tiles 2 kk and 2 kk + 1.
template <class T>
__device__ __forceinline__ void frag_a_from_acc(uint32_t (&a)[4], const float (&c0)[4],
                                                const float (&c1)[4]) {
  a[0] = Elem<T>::pack(c0[0], c0[1]);
  a[1] = Elem<T>::pack(c0[2], c0[3]);
  a[2] = Elem<T>::pack(c1[0], c1[1]);
  a[3] = Elem<T>::pack(c1[2], c1[3]);
}

// acc += A B^T for one warp: A = rows row0 .. row0 + 15 of tile a_s, B^T = rows
// 0 .. 8 kNT - 1 of tile b_s (row-major, row stride kLd), summed over columns
// [0, K) in 16-column steps (K <= kKMax; the tiles are zero padded past K).
// E.g. S = Q K^T (a_s = Q, b_s = K) or dP = dO V^T.
template <class T, int kKMax, int kNT, int kLd>
__device__ __forceinline__ void mma_rows_nt(float (&acc)[kNT][4], const T* a_s, int row0,
                                            const T* b_s, int K, int lane) {
#pragma unroll
  for (int kk = 0; kk < kKMax / 16; ++kk) {
    if (kk * 16 >= K) break;
    uint32_t a[4];
    frag_a(a, a_s, kLd, row0, kk * 16, lane);
#pragma unroll
    for (int np = 0; np < kNT / 2; ++np) {
      uint32_t bb[4];
      frag_b_nk(bb, b_s, kLd, np * 16, kk * 16, lane);
      mma_16816<T>(acc[2 * np], a, bb[0], bb[1]);
      mma_16816<T>(acc[2 * np + 1], a, bb[2], bb[3]);
    }
  }
}

// acc += P B for one warp: P = the warp's 16 x 16 kKS fp32 accumulators (packed to
// 16 bit: the A operand straight from registers), B = rows 0 .. 16 kKS - 1 of
// tile b_s (row-major, row stride kLd), output columns [0, N) (N <= kNMax).
// E.g. O += P V, dV += P^T dO, dQ += dS K.
template <class T, int kKS, int kNMax, int kLd>
__device__ __forceinline__ void mma_acc_nn(float (&acc)[kNMax / 8][4], const float (&p)[2 * kKS][4],
                                           const T* b_s, int N, int lane) {
#pragma unroll
  for (int kk = 0; kk < kKS; ++kk) {
    uint32_t a[4];
    frag_a_from_acc<T>(a, p[2 * kk], p[2 * kk + 1]);
#pragma unroll
    for (int np = 0; np < kNMax / 16; ++np) {
      if (np * 16 >= N) break;
      uint32_t bb[4];
      frag_b_kn(bb, b_s, kLd, kk * 16, np * 16, lane);
      mma_16816<T>(acc[2 * np], a, bb[0], bb[1]);
      mma_16816<T>(acc[2 * np + 1], a, bb[2], bb[3]);
    }
  }
}

// Asynchronous copy of a block of kRows rows (row stride ld elements in
// global memory) into a shared tile with row stride kLd; rows >= rows_valid
// and columns >= cols_valid (a multiple of 8) are zero filled. 16-byte
// chunks: the caller guarantees 16-byte aligned rows (ld % 8 == 0).
template <class T, int kRows, int kCols, int kLd, int kThreads>
__device__ __forceinline__ void load_rows_async(T* s, const T* g, int64_t ld, int64_t rows_valid,
                                                int cols_valid, int tid) {
  constexpr int kChunks = kCols / 8;
#pragma unroll 4
  for (int c = tid; c < kRows * kChunks; c += kThreads) {
    const int r = c / kChunks;
    const int col = (c % kChunks) * 8;
    const bool ok = r < rows_valid && col < cols_valid;
    cp_async_16(s + r * kLd + col, ok ? g + r * ld + col : g, ok);
  }
}

// Plain copy of a (rows x R) fp32 block into a shared tile with row stride
// ld >= R, zero filled beyond rows_valid and R (the pair-MLP operands u, t).
__device__ __forceinline__ void load_rows_f32(float* s, const float* g, int rows, int64_t rows_valid,
                                              int R, int ld, int tid, int nthreads) {
  for (int c = tid; c < rows * ld; c += nthreads) {
    const int r = c / ld;
    const int k = c % ld;
    s[c] = (r < rows_valid && k < R && g != nullptr) ? g[static_cast<int64_t>(r) * R + k] : 0.f;
  }
}

// load_rows_f32 through cp.async (4-byte copies: any R, any row offset), for
// tiles that are prefetched while the previous one is in use.
__device__ __forceinline__ void load_rows_f32_async(float* s, const float* g, int rows,
                                                    int64_t rows_valid, int R, int ld, int tid,
                                                    int nthreads) {
  for (int c = tid; c < rows * ld; c += nthreads) {
    const int r = c / ld;
    const int k = c % ld;
    const bool ok = r < rows_valid && k < R && g != nullptr;
    cp_async_4(s + c, ok ? g + static_cast<int64_t>(r) * R + k : s, ok);
  }
}

// n floats g[0..n_valid) then zeros, through cp.async.
__device__ __forceinline__ void load_vec_f32_async(float* s, const float* g, int n,
                                                   int64_t n_valid, int tid, int nthreads) {
  for (int c = tid; c < n; c += nthreads) {
    const bool ok = c < n_valid && g != nullptr;
    cp_async_4(s + c, ok ? g + c : s, ok);
  }
}

template <int kNT>
__device__ __forceinline__ void zero_acc(float (&c)[kNT][4]) {
#pragma unroll
  for (int n = 0; n < kNT; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) c[n][e] = 0.f;
}

// Sum / max over the four lanes that share an accumulator row.
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x;
}
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

}  // namespace flash
}  // namespace dense
}  // namespace itnet
