// Interface between the CUDA entry points of the low-rank op
// (lowrank_cuda.cpp) and its kernels (cuda_fwd.cu, cuda_bwd.cu,
// cuda_features.cu; device helpers in cuda_common.cuh). Plain C++ and the
// CUDA runtime API: no ATen, no torch headers. Every pointer is a contiguous
// buffer of the compute type (float or double, `is_double`), every launcher
// runs on `stream` without synchronisation, launches nothing for empty sizes
// and raises (TORCH_CHECK) when a grid would exceed 2^31 - 1 blocks.
//
// Design (the CPU algorithm of cpu_kernel.h, laid out for a GPU; 256-thread
// blocks, tiles in static shared memory, any Dk / Dv / F by chunk loops):
//
// Forward (fused: the features never exist as a (B, H, N, F) tensor):
//  1. FAVOR+ softmax only: exponent_max, one block per (slice, row range),
//     the max of the key exponents -> m_parts (slices, splits); the entry
//     reduces it to the slice's stabilizer c (at::max, -inf -> 0). A separate
//     pass (not the CPU's running max with rescaling) keeps the key pass free
//     of cross-block bookkeeping: every block of a slice uses the same c.
//  2. keys: one block per (slice, key range, 64-feature tile, 64-column Dv
//     tile); it walks its keys 32 at a time, featurizes them for its feature
//     tile into shared memory (psi = fmap(k), FAVOR+ exp(e - c) / sqrt(F)),
//     stages v, and accumulates its S tile (4 x 4 per thread, registers);
//     the Dv-tile-0 blocks also sum z. Plain stores into per-range partial
//     buffers S_parts (slices, splits, F, Dv), z_parts (slices, splits, F),
//     summed by the entry in a fixed order (at::sum): no float atomics,
//     bitwise repeatable.
//  3. queries: one block per (slice, 64-query tile, 64-column Dv tile); it
//     walks F 32 features at a time: phi chunk (shared), S chunk (shared),
//     out tile (4 x 4 per thread, registers), den per row. The FAVOR+ row
//     stabilizer is a running max over the feature chunks with rescaling of
//     the partial out / den (an online softmax across features): the result
//     is that of c_i = max_r e_r(q_i), which the CPU uses.
//
// Backward: features materialized in the compute dtype (phi (slices, N, F),
// psi (slices, M, F)) by the features kernels, the contractions
// (S, num, den, dphi, dS, dz, dpsi, dv, the FAVOR+ dx) by ATen batched
// matrix products in the entry, the per-row softmax terms (inv, dden, dn) by
// softmax_row_grads and the elementwise maps' dx by elementwise_feature_grad
// (feature.h's formulas). Deterministic too (no atomics; cuBLAS is bitwise
// repeatable on one GPU).
//
// Features op: favor features (one block per (slice, 64-row tile), F in
// 32-feature chunks; Row: exponents written, row max kept in shared memory,
// then rewritten as features in a second sweep of the block's own rows) or
// an elementwise grid-stride kernel; Slice stabilizer from exponent_max.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "lowrank/params.h"

namespace itnet {
namespace lowrank {

// Row ranges per slice of exponent_max (same rule for keys of the op and rows
// of the features op): enough blocks to fill `sm_count` SMs a few times over,
// no range shorter than 64 rows.
int64_t cuda_max_splits(int64_t slices, int64_t rows, int64_t sm_count);

// Key ranges per slice of the key pass (the splits of S_parts / z_parts).
int64_t cuda_key_splits(int64_t slices, int64_t M, int64_t F, int64_t Dv, int64_t sm_count);

// m_parts (slices, splits): max over rows [split_begin(n, splits, s), ..._begin(s + 1)) of
// slice sl and every feature of the FAVOR+ exponents of p.x (p.slices, p.n, p.Dk) with
// p.W (p.F, p.Dk); -inf for an empty range. p.fmap must be Favor.
void cuda_exponent_max(const FeatureParams& p, int64_t splits, void* m_parts, bool is_double,
                       cudaStream_t stream);

// Key pass: S_parts (slices, splits, F, Dv) and z_parts (slices, splits, F), every element
// written (zeros for features / ranges without keys). c: (slices,) key stabilizer, or null
// for c = 0.
void cuda_keys(const LowRankParams& p, const void* c, int64_t splits, void* S_parts,
               void* z_parts, bool is_double, cudaStream_t stream);

// Query pass: p.out (B, H, N, Dv) from the merged S (slices, F, Dv), z (slices, F) (z read
// in softmax mode only).
void cuda_queries(const LowRankParams& p, const void* S, const void* z, bool is_double,
                  cudaStream_t stream);

// Features op: p.phi (slices, n, F) = fmap(p.x) with stabilizer p.stab (FAVOR+ only): Row
// per row, Slice the constant c[slice] (c: (slices,), required for Slice), None 0.
void cuda_features(const FeatureParams& p, const void* c, bool is_double, cudaStream_t stream);

// dx = dphi * fmap'(x) for the elementwise maps (F = Dk), p.x, p.dphi, p.dx (slices, n, Dk).
void cuda_elementwise_feature_grad(const FeatureParams& p, bool is_double, cudaStream_t stream);

// Softmax backward per row r of `rows` (num, g, dn: (rows, Dv); den, dden: (rows,)):
//   kept = row_kept(den, eps), dn = g / den,
//   dden = denominator_grad(g . num, den) (both 0 for a cut row).
void cuda_softmax_row_grads(int64_t rows, int64_t Dv, const void* g, const void* num,
                            const void* den, double eps, void* dn, void* dden, bool is_double,
                            cudaStream_t stream);

}  // namespace lowrank
}  // namespace itnet
