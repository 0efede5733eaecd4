// The support S(i) of a query: causal predicate, window predicate, offset
// indexing into the offset-embedding table, and tile-level classification.
// Shared by CPU and CUDA kernels.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace itnet {

// Per-dim offset window lo_d <= p_j,d - p_i,d <= hi_d, and the row-major
// strides of the offset table over that box (last dim fastest).
struct Window {
  int dims = 0;        // 0 = no window
  double lo[kMaxPosDim];
  double hi[kMaxPosDim];
  int64_t stride[kMaxPosDim];  // offset-table strides (valid when integer)
};

ITNET_HD bool causal_allows(int64_t i, int64_t j) { return j <= i; }

// pq, pk: the D position coordinates of query i and key j.
ITNET_HD bool window_allows(const Window& w, const double* pq, const double* pk) {
  for (int d = 0; d < w.dims; ++d) {
    const double o = pk[d] - pq[d];
    if (!(o >= w.lo[d] && o <= w.hi[d])) return false;  // NaN-safe: rejects
  }
  return true;
}

// Row of the offset table for the pair; only meaningful when the pair is
// inside the window and positions are integers (checked by the op).
ITNET_HD int64_t offset_row(const Window& w, const double* pq, const double* pk) {
  int64_t idx = 0;
  for (int d = 0; d < w.dims; ++d) {
    idx += static_cast<int64_t>(::llround(pk[d] - pq[d] - w.lo[d])) * w.stride[d];
  }
  return idx;
}

// Bounding box of n positions (each D coordinates, contiguous).
ITNET_HD void position_bbox(const double* pos, int64_t n, int dims, double* lo, double* hi) {
  for (int d = 0; d < dims; ++d) {
    lo[d] = pos[d];
    hi[d] = pos[d];
  }
  for (int64_t a = 1; a < n; ++a) {
    for (int d = 0; d < dims; ++d) {
      const double x = pos[a * dims + d];
      lo[d] = x < lo[d] ? x : lo[d];
      hi[d] = x > hi[d] ? x : hi[d];
    }
  }
}

// How a (query tile, key tile) pair relates to the window, from the two
// bounding boxes: every pair outside (skip the tile), every pair inside (no
// per-pair test needed) or mixed.
enum class TileWindow : int { Outside = 0, Inside = 1, Partial = 2 };

ITNET_HD TileWindow classify_tile(const Window& w, const double* qlo, const double* qhi,
                                  const double* klo, const double* khi) {
  // Written so that a NaN offset range (inf - inf for infinite positions)
  // never claims Inside: it falls through to the per-pair test.
  bool inside = true;
  for (int d = 0; d < w.dims; ++d) {
    const double omin = klo[d] - qhi[d];
    const double omax = khi[d] - qlo[d];
    if (omax < w.lo[d] || omin > w.hi[d]) return TileWindow::Outside;
    if (!(omin >= w.lo[d] && omax <= w.hi[d])) inside = false;
  }
  return inside ? TileWindow::Inside : TileWindow::Partial;
}

// Causal relation of a query tile [i0, i1) and key tile [j0, j1).
ITNET_HD bool causal_tile_empty(int64_t i0, int64_t i1, int64_t j0) { return j0 > i1 - 1; }
ITNET_HD bool causal_tile_full(int64_t i0, int64_t j1) { return j1 - 1 <= i0; }

}  // namespace itnet
