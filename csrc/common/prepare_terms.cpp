#include "common/prepare_terms.h"

#include <cmath>

#include "common/activation.h"
#include "common/cuda_launch.h"
#include "common/enum_names.h"
#include "common/math.h"

namespace itnet {

std::string shape_str(const at::Tensor& x) { return c10::str(x.sizes()); }

void check_same(const at::Tensor& x, const at::Tensor& v, const char* name) {
  TORCH_CHECK(x.device() == v.device(), name, ": expected a tensor on ", v.device(),
              " (the device of v), got ", x.device());
  TORCH_CHECK(x.scalar_type() == v.scalar_type(), name, ": expected dtype ", v.scalar_type(),
              " (the dtype of v), got ", x.scalar_type());
}

namespace {

// (B or 1, n, last) -> contiguous (B, n, last)
at::Tensor batch_expand(const at::Tensor& x, int64_t B, const char* name) {
  TORCH_CHECK(x.size(0) == B || x.size(0) == 1, name, ": expected batch size ", B,
              " or 1, got shape ", shape_str(x));
  return x.expand({B, x.size(1), x.size(2)}).contiguous();
}

at::Tensor prepare_positions(const c10::optional<at::Tensor>& pos, int64_t B, int64_t n,
                             int64_t D, const at::Tensor& v, const char* name) {
  at::Tensor p;
  if (pos.has_value()) {
    p = *pos;
    TORCH_CHECK(p.dim() == 3 && (p.size(0) == B || p.size(0) == 1) && p.size(1) == n &&
                    p.size(2) == D,
                name, ": expected shape (", B, " or 1, ", n, ", ", D, "), got ", shape_str(p));
    TORCH_CHECK(at::isFloatingType(p.scalar_type()), name,
                ": expected a floating-point tensor, got ", p.scalar_type());
    TORCH_CHECK(p.device() == v.device(), name, ": expected a tensor on ", v.device(), ", got ",
                p.device());
    p = p.to(at::kDouble).contiguous();
    // (an inf position would make the offset inf - inf = NaN: the rule is finite ones)
    TORCH_CHECK(p.isfinite().all().item<bool>(), name,
                ": contains NaN or inf (positions must be finite)");
  } else {
    TORCH_CHECK(D == 1, name, ": required for a window of ", D,
                " position dims (the default is the integer index, 1 dim)");
    p = at::arange(n, v.options().dtype(at::kDouble)).view({1, n, 1});
  }
  return p;
}

}  // namespace

PreparedTerms prepare_terms(const KernelArgs& a, const c10::optional<at::Tensor>& key_padding_mask,
                            c10::optional<at::ScalarType> aux, int64_t n_queries) {
  PreparedTerms pr;
  KernelParams& p = pr.params;
  auto keep = [&](at::Tensor x) {
    pr.keep_alive.push_back(x);
    return x.data_ptr();
  };
  // the small per-point / per-key / per-pair operands, in the aux dtype
  const at::ScalarType aux_type = aux.has_value() ? *aux : a.v.scalar_type();
  auto keep_aux = [&](const at::Tensor& x) { return keep(x.to(aux_type).contiguous()); };

  TORCH_CHECK(a.v.dim() == 4, "v: expected a 4-D tensor (B, H, M, Dv), got shape ", shape_str(a.v));
  TORCH_CHECK(a.v.scalar_type() == at::kFloat || a.v.scalar_type() == at::kDouble ||
                  ITNET_ON_CUDA(a.v),
              "v: expected dtype float32 or float64 on CPU, got ", a.v.scalar_type());
  p.B = a.v.size(0);
  p.H = a.v.size(1);
  p.M = a.v.size(2);
  p.Dv = a.v.size(3);
  TORCH_CHECK(std::isfinite(a.scale), "scale: expected a finite number, got ", a.scale);

  // Padded keys: their k / v / t rows are replaced by zeros, so that whatever
  // they hold (NaN, inf) cannot reach the outputs or gradients through a
  // 0 * NaN in the products; their logits are -inf through key_bias.
  at::Tensor& pad = pr.pad;  // (B, M) bool
  if (key_padding_mask.has_value()) {
    pad = *key_padding_mask;
    TORCH_CHECK(pad.scalar_type() == at::kBool, "key_padding_mask: expected dtype bool, got ",
                pad.scalar_type());
    TORCH_CHECK(pad.dim() == 2 && pad.size(0) == p.B && pad.size(1) == p.M,
                "key_padding_mask: expected shape (", p.B, ", ", p.M, "), got ", shape_str(pad));
    TORCH_CHECK(pad.device() == a.v.device(), "key_padding_mask: expected a tensor on ", a.v.device());
  }
  auto drop_padded = [&](const at::Tensor& x) {  // x: (B, [H,] M, C)
    if (!pad.defined()) return x;
    at::Tensor m = x.dim() == 4 ? pad.view({p.B, 1, p.M, 1}) : pad.view({p.B, p.M, 1});
    return x.masked_fill(m, 0);
  };

  pr.v = drop_padded(a.v).contiguous();
  p.v = keep(pr.v);

  TORCH_CHECK(a.q.has_value() == a.k.has_value(), "q, k: give both (content term) or neither");
  p.N = -1;
  if (a.q.has_value()) {
    check_same(*a.q, a.v, "q");
    check_same(*a.k, a.v, "k");
    TORCH_CHECK(a.q->dim() == 4 && a.q->size(0) == p.B && a.q->size(1) == p.H,
                "q: expected shape (", p.B, ", ", p.H, ", N, Dk), got ", shape_str(*a.q));
    TORCH_CHECK(a.k->dim() == 4 && a.k->size(0) == p.B && a.k->size(1) == p.H && a.k->size(2) == p.M &&
                    a.k->size(3) == a.q->size(3),
                "k: expected shape (", p.B, ", ", p.H, ", ", p.M, ", ", a.q->size(3), "), got ",
                shape_str(*a.k));
    p.content = true;
    p.N = a.q->size(2);
    p.Dk = a.q->size(3);
    p.q = keep(a.q->contiguous());
    pr.k = drop_padded(*a.k).contiguous();
    p.k = keep(pr.k);
    p.scale = a.scale;
  }

  if (a.W2.has_value()) {
    check_same(*a.W2, a.v, "W2");
    TORCH_CHECK(a.W2->dim() == 2 && a.W2->size(0) == p.H, "W2: expected shape (", p.H,
                ", R), got ", shape_str(*a.W2));
    p.mlp = true;
    p.R = a.W2->size(1);
    p.W2 = keep_aux(*a.W2);
    TORCH_CHECK(a.activation >= 0 && a.activation < kNumActivations, "activation: expected ",
                codes_listing(kActivationNames), ", got ", a.activation);
    p.activation = static_cast<int>(a.activation);
    if (a.b2.has_value()) {
      check_same(*a.b2, a.v, "b2");
      TORCH_CHECK(a.b2->dim() == 1 && a.b2->size(0) == p.H, "b2: expected shape (", p.H,
                  "), got ", shape_str(*a.b2));
      p.b2 = keep_aux(*a.b2);
    }
    if (a.u.has_value()) {
      check_same(*a.u, a.v, "u");
      TORCH_CHECK(a.u->dim() == 3 && a.u->size(2) == p.R && (p.N < 0 || a.u->size(1) == p.N),
                  "u: expected shape (B or 1, N, ", p.R, "), got ", shape_str(*a.u));
      if (p.N < 0) p.N = a.u->size(1);
      p.u = keep_aux(batch_expand(*a.u, p.B, "u"));
    }
    if (a.t.has_value()) {
      check_same(*a.t, a.v, "t");
      TORCH_CHECK(a.t->dim() == 3 && a.t->size(1) == p.M && a.t->size(2) == p.R,
                  "t: expected shape (B or 1, ", p.M, ", ", p.R, "), got ", shape_str(*a.t));
      pr.t = drop_padded(batch_expand(*a.t, p.B, "t")).to(aux_type).contiguous();
      p.t = keep(pr.t);
    }
  } else {
    TORCH_CHECK(!a.u.has_value() && !a.t.has_value() && !a.b2.has_value() && !a.offset_table.has_value(),
                "u, t, b2, offset_table: the MLP term needs W2");
    TORCH_CHECK(a.q.has_value(), "q, k, W2: no logit term enabled (give q and k, or W2)");
  }
  if (p.N < 0 && n_queries >= 0) p.N = n_queries;
  if (p.N < 0) {
    TORCH_CHECK(a.q_pos.has_value() && a.q_pos->dim() == 3,
                "q_pos: a (B or 1, N, D) tensor is needed to know N when neither q nor u is given");
    p.N = a.q_pos->size(1);
  }

  // window and positions
  TORCH_CHECK(a.window_lo.size() == a.window_hi.size(), "window: lo and hi must have the same length");
  TORCH_CHECK(a.window_lo.size() <= static_cast<size_t>(kMaxPosDim), "window: at most ",
              kMaxPosDim, " position dims, got ", a.window_lo.size());
  const int64_t D = static_cast<int64_t>(a.window_lo.size());
  p.window.dims = static_cast<int>(D);
  for (int64_t d = 0; d < D; ++d) {
    TORCH_CHECK(a.window_lo[d] <= a.window_hi[d], "window: expected lo <= hi in dim ", d, ", got (",
                a.window_lo[d], ", ", a.window_hi[d], ")");
    p.window.lo[d] = a.window_lo[d];
    p.window.hi[d] = a.window_hi[d];
  }
  if (D > 0) {
    at::Tensor qp = prepare_positions(a.q_pos, p.B, p.N, D, a.v, "q_pos");
    at::Tensor kp = prepare_positions(a.k_pos, p.B, p.M, D, a.v, "k_pos");
    p.qpos_bstride = qp.size(0) == 1 ? 0 : p.N * D;
    p.kpos_bstride = kp.size(0) == 1 ? 0 : p.M * D;
    p.qpos = static_cast<const double*>(keep(qp));
    p.kpos = static_cast<const double*>(keep(kp));
    if (a.offset_table.has_value()) {
      // row-major strides over the window box; the volume is bounded by the
      // table's row count (checked below), so it cannot overflow
      double volume = 1;
      for (int64_t d = D - 1; d >= 0; --d) {
        TORCH_CHECK(std::isfinite(a.window_lo[d]) && std::isfinite(a.window_hi[d]) &&
                        a.window_lo[d] == std::floor(a.window_lo[d]) &&
                        a.window_hi[d] == std::floor(a.window_hi[d]),
                    "offset_table: needs a window with finite integer bounds, got (",
                    a.window_lo[d], ", ", a.window_hi[d], ") in dim ", d);
        p.window.stride[d] = static_cast<int64_t>(volume);
        volume *= a.window_hi[d] - a.window_lo[d] + 1;
        TORCH_CHECK(volume <= static_cast<double>(a.offset_table->size(0)),
                    "offset_table: expected at least ", volume,
                    " rows (the window volume), got shape ", shape_str(*a.offset_table));
      }
      TORCH_CHECK((qp == qp.round()).all().item<bool>() && (kp == kp.round()).all().item<bool>(),
                  "q_pos, k_pos: offset_table needs integer-valued positions");
    }
  } else {
    TORCH_CHECK(!a.offset_table.has_value(),
                "offset_table: needs a window (the table is indexed by the offset inside it)");
  }
  if (a.offset_table.has_value()) {
    const at::Tensor& E = *a.offset_table;
    check_same(E, a.v, "offset_table");
    TORCH_CHECK(E.dim() == 2 && E.size(1) == p.R,
                "offset_table: expected shape (O >= window volume, ", p.R, "), got ", shape_str(E));
    p.O = E.size(0);
    p.E = keep_aux(E);
  }

  p.softmax = a.softmax;
  return pr;
}

}  // namespace itnet
