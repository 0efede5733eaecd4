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

template <int kD, bool kMlp>
struct FwdTiles {
  static constexpr int kThreads = 128;
  // 16-row blocks per warp: two halve the shared-memory (ldmatrix) traffic
  // per MMA, which bounds these kernels; registers allow it up to kD = 128
  // (with 32-key tiles there) without the pair MLP (with it: spills)
  static constexpr int kRB = kD <= 128 && !kMlp ? 2 : 1;
  static constexpr bool kQInRegs = kD <= 64;        // Q fragments loaded once
  static constexpr int kBr = 64 * kRB;              // query rows per block
  // keys per tile: fewer for the wide accumulators (registers)
  static constexpr int kBc = kD <= 64 || (kD <= 128 && kRB == 1) ? 64 : 32;
  static constexpr int kLd = kD + 8;                // padded smem row (elements)
  static constexpr int64_t kTileBytes = int64_t(kBr + 2 * kBc) * kLd * 2;
};

template <int kD>
struct BwdTiles {
  static constexpr int kThreads = 128;
  static constexpr int kBk = 64;                    // keys per block, key pass
  static constexpr int kBq = kD <= 64 ? 64 : 32;    // queries per tile, key pass
  static constexpr int kBr = 64;                    // queries per block, query pass
  static constexpr int kBc = kD <= 64 ? 64 : 32;    // keys per tile, query pass
  static constexpr int kLd = kD + 8;
  // Key pass: K, V tiles, two buffers of the Q, dO tiles (the next query tile
  // streams in while one is in use), then two of lse and delta (float32).
  static constexpr int64_t kKvBytes = int64_t(2 * kBk + 4 * kBq) * kLd * 2 + 4 * kBq * 4;
  // Query pass: Q, dO tiles, two buffers of the K, V tiles.
  static constexpr int64_t kQBytes = int64_t(2 * kBr + 4 * kBc) * kLd * 2;
};

// Shared memory of a pass: the forward's layout (u, t, W2, E rows) plus
// float32 accumulators: per-row MLP gradients (dt or du) of the block's
// rows, per-warp dW2 rows and the offset-table gradient.
struct BwdSmem {
  Smem base;
  int64_t off_rows = 0, off_dw = 0, off_de = 0, bytes = 0;
};

inline BwdSmem make_bwd_smem(int64_t tile_bytes, int rows_q, int rows_k, int own_rows,
                             bool key_pass, const FwdParams& p, bool want_de) {
  BwdSmem s;
  s.base = make_smem(tile_bytes, rows_q, rows_k, p);
  s.bytes = s.base.bytes;
  if (p.mlp) {
    const int64_t row = s.base.ld * static_cast<int64_t>(sizeof(float));
    s.off_rows = s.bytes;
    s.bytes += own_rows * row;
    s.off_dw = s.bytes;
    if (key_pass) s.bytes += 4 * row;
    s.off_de = s.bytes;
    if (key_pass && want_de) s.bytes += p.O * row;
  }
  return s;
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
