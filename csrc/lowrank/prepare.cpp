// Checks of the low-rank op's arguments (see prepare.h).
#include "lowrank/prepare.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/enum_names.h"

namespace itnet {
namespace lowrank {
namespace {

bool is_float_type(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

FeatureMap check_feature_map(int64_t code, const char* op) {
  TORCH_CHECK(code >= 0 && code < kNumFeatureMaps, op, ": feature_map: expected a code in [0, ",
              kNumFeatureMaps - 1, "] (", names_joined(kFeatureMapNames), "), got ", code);
  return static_cast<FeatureMap>(code);
}

// The projection: required (F, Dk) for Favor, absent otherwise. Returns F.
int64_t check_projection(const c10::optional<at::Tensor>& projection, FeatureMap fm, int64_t Dk,
                         const at::Tensor& like, const char* op) {
  if (fm != FeatureMap::Favor) {
    TORCH_CHECK(!projection.has_value(), op,
                ": projection: only the favor+ feature map takes a projection, got one with "
                "feature_map code ", static_cast<int>(fm));
    return Dk;
  }
  TORCH_CHECK(projection.has_value(), op,
              ": projection: the favor+ feature map needs its (F, Dk) projection");
  const at::Tensor& W = *projection;
  TORCH_CHECK(W.dim() == 2 && W.size(0) >= 1 && W.size(1) == Dk, op,
              ": projection: expected shape (F, Dk) with F >= 1 and Dk = ", Dk, ", got ",
              W.sizes());
  TORCH_CHECK(is_float_type(W.scalar_type()), op,
              ": projection: expected a floating-point tensor, got dtype ", W.scalar_type());
  TORCH_CHECK(W.device() == like.device(), op, ": projection: expected a tensor on ",
              like.device(), ", got ", W.device());
  return W.size(0);
}

void check_4d(const at::Tensor& x, const char* name, const char* shape, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": ", name, ": expected a 4-D tensor ", shape, ", got shape ",
              x.sizes());
}

}  // namespace

Prepared prepare(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const c10::optional<at::Tensor>& projection, int64_t feature_map, bool softmax,
                 double eps, const char* op) {
  check_4d(q, "q", "(B, H, N, Dk)", op);
  check_4d(k, "k", "(B, H, M, Dk)", op);
  check_4d(v, "v", "(B, H, M, Dv)", op);
  TORCH_CHECK(is_float_type(v.scalar_type()), op,
              ": v: expected dtype float16, bfloat16, float32 or float64, got ", v.scalar_type());
  for (const auto& [name, x] : {std::pair<const char*, const at::Tensor&>{"q", q}, {"k", k}}) {
    TORCH_CHECK(x.scalar_type() == v.scalar_type(), op, ": ", name, ": expected dtype ",
                v.scalar_type(), " (same as v), got ", x.scalar_type());
    TORCH_CHECK(x.device() == v.device(), op, ": ", name, ": expected a tensor on ", v.device(),
                " (the device of v), got ", x.device());
  }
  const int64_t B = v.size(0), H = v.size(1), M = v.size(2), Dv = v.size(3);
  TORCH_CHECK(q.size(0) == B && q.size(1) == H, op, ": q: expected shape (B, H, N, Dk) with (B, H) = (",
              B, ", ", H, ") from v, got ", q.sizes());
  TORCH_CHECK(k.size(0) == B && k.size(1) == H && k.size(2) == M && k.size(3) == q.size(3), op,
              ": k: expected shape (B, H, M, Dk) = (", B, ", ", H, ", ", M, ", ", q.size(3),
              ") from v and q, got ", k.sizes());
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, op, ": eps: expected a finite number >= 0, got ",
              eps);
  const FeatureMap fm = check_feature_map(feature_map, op);
  const int64_t Dk = q.size(3);
  const int64_t F = check_projection(projection, fm, Dk, v, op);

  Prepared pr;
  pr.compute = compute_dtype(v.scalar_type());
  const auto opts = v.options().dtype(pr.compute);
  pr.q = q.to(opts).contiguous();
  pr.k = k.to(opts).contiguous();
  pr.v = v.to(opts).contiguous();
  if (fm == FeatureMap::Favor) {
    pr.W = projection->to(opts).contiguous();
    pr.Wt = pr.W.t().contiguous();
  }
  LowRankParams& p = pr.params;
  p.B = B;
  p.H = H;
  p.N = q.size(2);
  p.M = M;
  p.Dk = Dk;
  p.Dv = Dv;
  p.F = F;
  p.fmap = fm;
  p.softmax = softmax;
  p.eps = eps;
  p.q = pr.q.data_ptr();
  p.k = pr.k.data_ptr();
  p.v = pr.v.data_ptr();
  p.W = pr.W.defined() ? pr.W.data_ptr() : nullptr;
  p.Wt = pr.Wt.defined() ? pr.Wt.data_ptr() : nullptr;
  return pr;
}

at::Tensor prepare_grad_out(const at::Tensor& grad_out, const Prepared& pr, const char* op) {
  const LowRankParams& p = pr.params;
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == p.B && grad_out.size(1) == p.H &&
                  grad_out.size(2) == p.N && grad_out.size(3) == p.Dv,
              op, ": grad_out: expected shape (B, H, N, Dv) = (", p.B, ", ", p.H, ", ", p.N, ", ",
              p.Dv, "), got ", grad_out.sizes());
  TORCH_CHECK(grad_out.device() == pr.v.device(), op, ": grad_out: expected a tensor on ",
              pr.v.device(), ", got ", grad_out.device());
  TORCH_CHECK(is_float_type(grad_out.scalar_type()), op,
              ": grad_out: expected a floating-point tensor, got dtype ", grad_out.scalar_type());
  return grad_out.to(pr.v.options()).contiguous();
}

PreparedFeatures prepare_features(const at::Tensor& x, const c10::optional<at::Tensor>& projection,
                                  int64_t feature_map, int64_t stabilize, const char* op) {
  TORCH_CHECK(x.dim() >= 2, op, ": x: expected a tensor (..., n, Dk) of at least 2 dims, got shape ",
              x.sizes());
  TORCH_CHECK(is_float_type(x.scalar_type()), op,
              ": x: expected dtype float16, bfloat16, float32 or float64, got ", x.scalar_type());
  const FeatureMap fm = check_feature_map(feature_map, op);
  TORCH_CHECK(stabilize >= 0 && stabilize < kNumStabilizers, op, ": stabilize: expected ",
              codes_listing(kStabilizerNames), ", got ", stabilize);
  const int64_t Dk = x.size(-1);
  const int64_t F = check_projection(projection, fm, Dk, x, op);

  PreparedFeatures pr;
  pr.compute = compute_dtype(x.scalar_type());
  const auto opts = x.options().dtype(pr.compute);
  pr.x = x.to(opts).contiguous();
  if (fm == FeatureMap::Favor) {
    pr.W = projection->to(opts).contiguous();
    pr.Wt = pr.W.t().contiguous();
  }
  FeatureParams& p = pr.params;
  p.n = x.size(-2);
  p.slices = 1;
  for (int64_t d = 0; d + 2 < x.dim(); ++d) p.slices *= x.size(d);
  p.Dk = Dk;
  p.F = F;
  p.fmap = fm;
  p.stab = static_cast<Stabilizer>(stabilize);
  p.x = pr.x.data_ptr();
  p.W = pr.W.defined() ? pr.W.data_ptr() : nullptr;
  p.Wt = pr.Wt.defined() ? pr.Wt.data_ptr() : nullptr;
  pr.out_shape = x.sizes().vec();
  pr.out_shape.back() = F;
  return pr;
}

int64_t row_splits(int64_t slices, int64_t rows, int64_t threads) {
  const int64_t want = (2 * std::max<int64_t>(threads, 1) + std::max<int64_t>(slices, 1) - 1) /
                       std::max<int64_t>(slices, 1);
  const int64_t most = std::max<int64_t>(1, (rows + kMinRows - 1) / kMinRows);
  return std::clamp<int64_t>(want, 1, most);
}

KeyState merge_key_state(const at::Tensor& S_parts, const at::Tensor& z_parts,
                         const at::Tensor& m_parts) {
  const double ninf = -std::numeric_limits<double>::infinity();
  at::Tensor c = std::get<0>(m_parts.max(1));  // (slices,)
  at::Tensor w = at::where(m_parts == ninf, at::zeros({}, m_parts.options()),
                           (m_parts - c.unsqueeze(1)).exp());
  KeyState st;
  st.S = (S_parts * w.unsqueeze(-1).unsqueeze(-1)).sum(1);
  st.z = (z_parts * w.unsqueeze(-1)).sum(1);
  st.c = at::where(c == ninf, at::zeros({}, c.options()), c);
  return st;
}

}  // namespace lowrank
}  // namespace itnet
