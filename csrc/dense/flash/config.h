// Tile shapes and shared-memory layouts of the flash kernels, and the
// launch templates that the per-instance .cu files instantiate (one dtype
// and head-dim bucket per file, so that builds stay parallel). Plain C++:
// the host-side dispatcher (api.cu) sizes shared memory from these too.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "dense/flash/flash.h"

namespace itnet {
namespace dense {
namespace flash {

// Shared memory beyond the 16-bit tiles: the float32 rows of u (query tile)
// and t (key tile), the head's W2 row and the offset table, each row padded to
// ld = R4 + 4 floats (R4 = R rounded up to 4). Byte offsets from the start.
struct Smem {
  int ld = 4;
  int R4 = 0;
  int64_t off_u = 0, off_t = 0, off_w = 0, off_e = 0, bytes = 0;
};

inline Smem make_smem(int64_t tile_bytes, int rows_q, int rows_k, const FwdParams& p) {
  Smem s;
  s.bytes = tile_bytes;
  if (!p.mlp) return s;
  s.R4 = static_cast<int>((p.R + 3) / 4 * 4);
  s.ld = s.R4 + 4;
  const int64_t row = s.ld * static_cast<int64_t>(sizeof(float));
  s.off_u = s.bytes;
  s.bytes += rows_q * row;
  s.off_t = s.bytes;
  s.bytes += rows_k * row;
  s.off_w = s.bytes;
  s.bytes += row;
  s.off_e = s.bytes;
  if (p.E != nullptr) s.bytes += p.O * row;
  return s;
}

// A forward configuration: kWarps warps of kRB blocks of 16 query rows
// (kBr = 16 kRB kWarps query rows per block), key tiles of kBc keys, kStages
// load stages (2: the next K tile streams in during softmax and P V, as in
// FlashAttention 2; 1: K and V of a tile are loaded together, then used) and
// the pair-MLP term in packed 16-bit math (kPacked: pre-activation, activation
// and W2 products on half2 / bfloat162 pairs, sums of 4 hidden units then
// accumulated in float32; packed.cuh). The default per head dim is FwdTiles;
// the others are the instances of the configuration sweep (sweep/).
template <int kD_, int kWarps_, int kRB_, int kBc_, int kStages_ = 2, bool kPacked_ = false>
struct FwdCfg {
  static constexpr int kD = kD_, kWarps = kWarps_, kRB = kRB_, kBc = kBc_, kStages = kStages_;
  static constexpr bool kPacked = kPacked_;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr bool kQInRegs = kD <= 64;        // Q fragments loaded once
  static constexpr int kBr = 16 * kRB * kWarps;     // query rows per block
  static constexpr int kLd = kD + 8;                // padded smem row (elements)
  static constexpr int64_t kTileBytes = int64_t(kBr + 2 * kBc) * kLd * 2;
  static_assert(kD % 16 == 0 && kBc % 16 == 0 && kRB >= 1, "FwdCfg: 16-element steps");
  static_assert(kStages == 1 || kStages == 2, "FwdCfg: 1 or 2 load stages");
};

// The default forward configuration: 4 warps; two 16-row blocks per warp
// halve the shared-memory (ldmatrix) traffic per MMA, which bounds these
// kernels; registers allow it up to kD = 128 (with 32-key tiles there)
// without the pair MLP (with it: spills). Fewer keys per tile for the wide
// accumulators (registers).
template <int kD, bool kMlp, int kRB = (kD <= 128 && !kMlp ? 2 : 1)>
using FwdTiles = FwdCfg<kD, 4, kRB, (kD <= 64 || (kD <= 128 && kRB == 1) ? 64 : 32)>;

// A backward configuration: kWarps warps of 16 rows (keys in the key pass,
// queries in the query pass: kBk = kBr = 16 kWarps) and tiles of kTile
// queries (key pass) or keys (query pass) streamed past them.
template <int kD_, int kWarps_, int kTile_>
struct BwdCfg {
  static constexpr int kD = kD_, kWarps = kWarps_;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBk = 16 * kWarps;           // keys per block, key pass
  static constexpr int kBq = kTile_;                // queries per tile, key pass
  static constexpr int kBr = 16 * kWarps;           // queries per block, query pass
  static constexpr int kBc = kTile_;                // keys per tile, query pass
  // blocks per SM the query pass (no MLP) is compiled for (registers)
  static constexpr int kQMinBlocks = kWarps <= 4 ? 3 : 1;
  static constexpr int kLd = kD + 8;
  // Key pass: K, V tiles, two buffers of the Q, dO tiles (the next query tile
  // streams in while one is in use), then two of lse and delta (float32).
  static constexpr int64_t kKvBytes = int64_t(2 * kBk + 4 * kBq) * kLd * 2 + 4 * kBq * 4;
  // Query pass: Q, dO tiles, two buffers of the K, V tiles.
  static constexpr int64_t kQBytes = int64_t(2 * kBr + 4 * kBc) * kLd * 2;
  static_assert(kD % 16 == 0 && kTile_ % 16 == 0, "BwdCfg: 16-element steps");
};

// The default backward configuration per head dim.
template <int kD>
using BwdTiles = BwdCfg<kD, 4, (kD <= 64 ? 64 : 32)>;

// Shared memory of a pass: the forward's layout (u, t, W2, E rows) plus
// float32 accumulators: per-row MLP gradients (dt or du) of the block's
// rows, per-warp dW2 rows (key pass) and the offset-table gradient.
struct BwdSmem {
  Smem base;
  int64_t off_rows = 0, off_dw = 0, off_de = 0, bytes = 0;
};

inline BwdSmem make_bwd_smem(int64_t tile_bytes, int rows_q, int rows_k, int own_rows,
                             int warps, bool key_pass, const FwdParams& p, bool want_de) {
  BwdSmem s;
  s.base = make_smem(tile_bytes, rows_q, rows_k, p);
  s.bytes = s.base.bytes;
  if (p.mlp) {
    const int64_t row = s.base.ld * static_cast<int64_t>(sizeof(float));
    s.off_rows = s.bytes;
    s.bytes += own_rows * row;
    s.off_dw = s.bytes;
    if (key_pass) s.bytes += warps * row;
    s.off_de = s.bytes;
    if (key_pass && want_de) s.bytes += p.O * row;
  }
  return s;
}

// Shared memory of a configuration's forward kernel / backward passes for p.
template <class Cfg>
int64_t fwd_bytes_cfg(const FwdParams& p) {
  return make_smem(Cfg::kTileBytes, Cfg::kBr, Cfg::kBc, p).bytes;
}

// (the backward: dynamic plus the key pass's static db2 partials, one float per warp)
template <class Cfg>
int64_t bwd_bytes_cfg(const FwdParams& p, bool want_dE) {
  const int64_t kv = make_bwd_smem(Cfg::kKvBytes, 2 * Cfg::kBq, Cfg::kBk, Cfg::kBk, Cfg::kWarps,
                                   true, p, want_dE).bytes + 4 * Cfg::kWarps;
  const int64_t q = make_bwd_smem(Cfg::kQBytes, Cfg::kBr, 2 * Cfg::kBc, Cfg::kBr, Cfg::kWarps,
                                  false, p, false).bytes;
  return kv > q ? kv : q;
}

template <class T, int kD>
void launch_fwd(const FwdParams& p, cudaStream_t stream);

template <class T, int kD>
void launch_bwd(const BwdParams& bp, const FlashGrads& g, cudaStream_t stream);

}  // namespace flash
}  // namespace dense
}  // namespace itnet

// Explicit instantiation of a launch template in its own translation unit.
#define ITNET_FLASH_INSTANCE(fn, T, D) \
  namespace itnet {                    \
  namespace dense {                    \
  namespace flash {                    \
  template void fn<T, D>(FN_ARGS_##fn); \
  }                                    \
  }                                    \
  }
#define FN_ARGS_launch_fwd const FwdParams&, cudaStream_t
#define FN_ARGS_launch_bwd const BwdParams&, const FlashGrads&, cudaStream_t
