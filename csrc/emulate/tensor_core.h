// Emulated bodies of the flash kernels' tensor-core and async-copy PTX
// (dense/flash/mma.cuh), warp-wide as the PTX ISA defines them:
//  - mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: the warp's fragments
//    are gathered (every lane must take part), each lane computes its four
//    accumulators from the whole A (16 x 16) and B (16 x 8) tiles. The
//    products of 16-bit values are exact in float; the sums are taken in
//    double and rounded once, so the result is the exact one rounded, not the
//    tensor core's (compare with tolerances);
//  - ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lane l gives the
//    address of row l % 8 of matrix l / 8; each lane reads its own elements
//    (row l / 4, columns 2 (l % 4) and + 1; transposed with .trans), so the
//    race checks see the reads as the receiving lane's;
//  - cp.async: queued, carried out at cp.async.wait_group (so a read before
//    the wait sees the poisoned shared memory, and the race checks see the
//    copy's writes when they land).
// Fragment layouts: PTX ISA, "Matrix Fragments for mma.m16n8k16".
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "emulate/device.h"

namespace itnet {
namespace emu {

inline void require_full_warp(const char* op, unsigned arrived) {
  if (arrived != 0xffffffffu)
    device_fail(std::string(op) +
                " is .aligned: every lane of the warp must execute it, "
                "but only lanes of mask " +
                std::to_string(arrived) + " did");
}

inline float half_bits_to_float(uint16_t h, bool bf16) {
  if (bf16) {
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
  return __half2float(__half{h});
}

// c += A (16 x 16, row) * B (16 x 8, col) for the warp; a / b / c: this lane's fragments.
inline void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                         bool bf16) {
  struct Frag {
    uint32_t a[4], b[2];
  };
  const Frag mine{{a[0], a[1], a[2], a[3]}, {b0, b1}};
  Frag all[32];
  unsigned arrived = 0;
  warp_exchange(bf16 ? "mma.sync.m16n8k16.bf16" : "mma.sync.m16n8k16.f16", 0xffffffffu, &mine,
                sizeof(Frag), all, &arrived);
  require_full_warp("mma.sync", arrived);
  // This lane's outputs need rows g and g + 8 of A (held by lanes 4g .. 4g + 3: a0 / a2
  // and a1 / a3) and columns 2t, 2t + 1 of B (held by lanes 8t .. 8t + 7: b0, b1).
  auto lo = [&](uint32_t r) { return half_bits_to_float(static_cast<uint16_t>(r & 0xffffu), bf16); };
  auto hi = [&](uint32_t r) { return half_bits_to_float(static_cast<uint16_t>(r >> 16), bf16); };
  const int lane = static_cast<int>(linear_lane());
  const int g = lane >> 2, t = lane & 3;
  float A[2][16], B[2][16];  // A[row g, g + 8][k], B[column 2t, 2t + 1][k]
  for (int tt = 0; tt < 4; ++tt) {
    const Frag& f = all[4 * g + tt];
    A[0][2 * tt] = lo(f.a[0]);
    A[0][2 * tt + 1] = hi(f.a[0]);
    A[1][2 * tt] = lo(f.a[1]);
    A[1][2 * tt + 1] = hi(f.a[1]);
    A[0][2 * tt + 8] = lo(f.a[2]);
    A[0][2 * tt + 9] = hi(f.a[2]);
    A[1][2 * tt + 8] = lo(f.a[3]);
    A[1][2 * tt + 9] = hi(f.a[3]);
  }
  for (int col = 0; col < 2; ++col) {
    const int n = 2 * t + col;  // column n of B is held by lanes 4n .. 4n + 3 (groupID n)
    for (int tt = 0; tt < 4; ++tt) {
      const Frag& f = all[4 * n + tt];
      B[col][2 * tt] = lo(f.b[0]);
      B[col][2 * tt + 1] = hi(f.b[0]);
      B[col][2 * tt + 8] = lo(f.b[1]);
      B[col][2 * tt + 9] = hi(f.b[1]);
    }
  }
  // c0: (g, 2t), c1: (g, 2t + 1), c2: (g + 8, 2t), c3: (g + 8, 2t + 1)
  for (int i = 0; i < 4; ++i) {
    const int r = i >> 1, col = i & 1;
    double acc = c[i];
    for (int k = 0; k < 16; ++k) acc += static_cast<double>(A[r][k]) * B[col][k];
    c[i] = static_cast<float>(acc);
  }
}

inline void check_shared_row(const char* op, const void* p, unsigned align) {
  if (!in_shared(p)) device_fail(std::string(op) + ": the address is not in shared memory");
  if (reinterpret_cast<uintptr_t>(p) % align != 0)
    device_fail(std::string(op) + ": the address is not " + std::to_string(align) +
                "-byte aligned");
}

inline void ldmatrix_x4(uint32_t (&r)[4], const void* row, bool trans) {
  const char* op = trans ? "ldmatrix.x4.trans" : "ldmatrix.x4";
  check_shared_row(op, row, 16);
  const void* all[32];
  unsigned arrived = 0;
  warp_exchange(op, 0xffffffffu, &row, sizeof(const void*), all, &arrived);
  require_full_warp(op, arrived);
  const int lane = static_cast<int>(linear_lane());
  const int g = lane >> 2, t = lane & 3;
  for (int m = 0; m < 4; ++m) {
    if (!trans) {
      r[m] = *reinterpret_cast<const uint32_t*>(static_cast<const char*>(all[m * 8 + g]) + 4 * t);
    } else {
      const uint16_t e0 =
          *reinterpret_cast<const uint16_t*>(static_cast<const char*>(all[m * 8 + 2 * t]) + 2 * g);
      const uint16_t e1 = *reinterpret_cast<const uint16_t*>(
          static_cast<const char*>(all[m * 8 + 2 * t + 1]) + 2 * g);
      r[m] = static_cast<uint32_t>(e0) | (static_cast<uint32_t>(e1) << 16);
    }
  }
}

inline void cp_async_checked(void* dst, const void* src, int bytes, bool valid) {
  check_shared_row("cp.async (destination)", dst, static_cast<unsigned>(bytes));
  if (valid && reinterpret_cast<uintptr_t>(src) % static_cast<unsigned>(bytes) != 0)
    device_fail("cp.async: the global source is not " + std::to_string(bytes) + "-byte aligned");
  cp_async(dst, src, bytes, valid);
}

}  // namespace emu
}  // namespace itnet
