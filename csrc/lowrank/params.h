// Parameters of the fused low-rank integral transform (docs/design.md section 2,
// lowrank), non-causal:
//
//   phi_i = fmap(q_i), psi_j = fmap(k_j)                          (F features)
//   num_i = phi_i^T S,  S = sum_j psi_j v_j^T   (F x Dv)
//   den_i = phi_i^T z,  z = sum_j psi_j         (F)     softmax mode only
//   out_i = num_i / den_i (0 where |den_i| <= eps), or num_i in `none` mode.
//
// Every tensor is contiguous, (B, H, rows, cols) row-major; (b, h) slices are
// independent. Plain struct, no torch types: shared by the C++ and CUDA
// translation units.
#pragma once

#include <cstdint>

#include "common/enum_table.h"

namespace itnet {
namespace lowrank {

// The feature maps applied inside the kernels, X(Member, "name", code); the
// Python side reads the names in code order from
// torch.ops.itnet.enum_names("feature_map"). The codes are part of the op
// schemas (`int feature_map`) and are the positions in the list:
//   Identity    phi(x) = x                                   F = Dk
//   EluPlusOne  phi(x) = elu(x) + 1                          F = Dk
//   Relu        phi(x) = max(x, 0)                           F = Dk
//   Favor       FAVOR+: exp(W x' - |x'|^2 / 2 - c) / sqrt(F), x' = x Dk^(-1/4),
//               W the (F, Dk) projection                     F = rows of W
#define ITNET_FEATURE_MAPS(X)    \
  X(Identity, "identity", 0)     \
  X(EluPlusOne, "elu+1", 1)      \
  X(Relu, "relu", 2)             \
  X(Favor, "favor+", 3)

// The FAVOR+ stabilizer c (feature.h explains why it is allowed), codes of
// `int stabilize`, names from torch.ops.itnet.enum_names("stabilizer"):
//   None   c = 0: the unbiased features (`none` mode)
//   Row    c = max of the row's exponents (queries, softmax mode)
//   Slice  c = max over every row and feature of the (b, h) slice (keys)
#define ITNET_STABILIZERS(X) \
  X(None, "none", 0)         \
  X(Row, "row", 1)           \
  X(Slice, "slice", 2)

enum class FeatureMap : int { ITNET_FEATURE_MAPS(ITNET_ENUM_MEMBER) };
enum class Stabilizer : int { ITNET_STABILIZERS(ITNET_ENUM_MEMBER) };

// Names in code order.
constexpr const char* kFeatureMapNames[] = {ITNET_FEATURE_MAPS(ITNET_ENUM_NAME)};
constexpr const char* kStabilizerNames[] = {ITNET_STABILIZERS(ITNET_ENUM_NAME)};
constexpr int kFeatureMapCodes[] = {ITNET_FEATURE_MAPS(ITNET_ENUM_CODE)};
constexpr int kStabilizerCodes[] = {ITNET_STABILIZERS(ITNET_ENUM_CODE)};
constexpr int kNumFeatureMaps = static_cast<int>(sizeof(kFeatureMapCodes) / sizeof(int));
constexpr int kNumStabilizers = static_cast<int>(sizeof(kStabilizerCodes) / sizeof(int));
static_assert(codes_are_positions(kFeatureMapCodes),
              "ITNET_FEATURE_MAPS: the codes must be 0, 1, ... in list order");
static_assert(codes_are_positions(kStabilizerCodes),
              "ITNET_STABILIZERS: the codes must be 0, 1, ... in list order");

struct LowRankParams {
  int64_t B = 0, H = 0, N = 0, M = 0, Dk = 0, Dv = 0, F = 0;
  FeatureMap fmap = FeatureMap::Identity;
  bool softmax = false;
  double eps = 0.0;  // softmax: rows with |den| <= eps output 0

  const void* q = nullptr;  // (B, H, N, Dk)
  const void* k = nullptr;  // (B, H, M, Dk)
  const void* v = nullptr;  // (B, H, M, Dv)
  const void* W = nullptr;   // (F, Dk), Favor only
  const void* Wt = nullptr;  // W transposed, (Dk, F) contiguous, Favor only
  void* out = nullptr;       // (B, H, N, Dv)

  int64_t slices() const { return B * H; }
  // Favor features are stabilized only in softmax mode, where c cancels.
  Stabilizer query_stabilizer() const {
    return fmap == FeatureMap::Favor && softmax ? Stabilizer::Row : Stabilizer::None;
  }
  Stabilizer key_stabilizer() const {
    return fmap == FeatureMap::Favor && softmax ? Stabilizer::Slice : Stabilizer::None;
  }
};

// The backward recomputes the features, S, z, num and den from the inputs
// (nothing but the inputs is saved) and writes dq, dk, dv (same shapes as
// q, k, v). The projection W gets no gradient (a random buffer).
struct LowRankBwdParams : LowRankParams {
  const void* dout = nullptr;  // (B, H, N, Dv)
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
};

// The features op (the causal path: features here, prefix sums in the decay
// scan): phi = fmap(x) for x (S slices, n, Dk), stabilized per `stab`.
struct FeatureParams {
  int64_t slices = 0, n = 0, Dk = 0, F = 0;
  FeatureMap fmap = FeatureMap::Identity;
  Stabilizer stab = Stabilizer::None;
  const void* x = nullptr;  // (slices, n, Dk)
  const void* W = nullptr;   // (F, Dk), Favor only
  const void* Wt = nullptr;  // (Dk, F), Favor only
  void* phi = nullptr;       // (slices, n, F)
  // backward: dx from dphi
  const void* dphi = nullptr;
  void* dx = nullptr;
};

}  // namespace lowrank
}  // namespace itnet
