#include "dense/prepare.h"

#include <cmath>
#include <limits>

#include "common/activation.h"
#include "common/enum_names.h"
#include "common/math.h"

namespace itnet {
namespace dense {
namespace {

std::string shape_str(const at::Tensor& x) { return c10::str(x.sizes()); }

void check_same(const at::Tensor& x, const at::Tensor& v, const char* name) {
  TORCH_CHECK(x.device() == v.device(), name, ": expected a tensor on ", v.device(),
              " (the device of v), got ", x.device());
  TORCH_CHECK(x.scalar_type() == v.scalar_type(), name, ": expected dtype ", v.scalar_type(),
              " (the dtype of v), got ", x.scalar_type());
}

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
    TORCH_CHECK(!p.isnan().any().item<bool>(), name, ": contains NaN");
  } else {
    TORCH_CHECK(D == 1, name, ": required for a window of ", D,
                " position dims (the default is the integer index, 1 dim)");
    p = at::arange(n, v.options().dtype(at::kDouble)).view({1, n, 1});
  }
  return p;
}

// (..., M, C) -> (..., ceil(M / tile), C, tile): each key tile transposed and
// stored contiguously (zero padded), so the kernels read rows of `tile` keys
// with a small fixed leading dimension. With ld = M instead, power-of-two M
// makes consecutive rows alias in the L1 cache.
at::Tensor key_tiles_transposed(const at::Tensor& x, int64_t tile) {
  const int64_t M = x.size(-2);
  const int64_t nt = (M + tile - 1) / tile;
  at::Tensor xp = x;
  if (nt * tile != M) xp = at::constant_pad_nd(x, {0, 0, 0, nt * tile - M});
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 2);
  shape.push_back(nt);
  shape.push_back(tile);
  shape.push_back(x.size(-1));
  return xp.reshape(shape).transpose(-1, -2).contiguous();
}

}  // namespace

Prepared prepare(const DenseArgs& a, int64_t key_tile, bool backward,
                 c10::optional<at::ScalarType> aux, int64_t n_queries) {
  Prepared pr;
  FwdParams& p = pr.params;
  auto keep = [&](at::Tensor x) {
    pr.keep_alive.push_back(x);
    return x.data_ptr();
  };
  // the small per-point / per-key / per-pair operands, in the aux dtype
  const at::ScalarType aux_type = aux.has_value() ? *aux : a.v.scalar_type();
  auto keep_aux = [&](const at::Tensor& x) { return keep(x.to(aux_type).contiguous()); };

  TORCH_CHECK(a.v.dim() == 4, "v: expected a 4-D tensor (B, H, M, Dv), got shape ", shape_str(a.v));
  TORCH_CHECK(a.v.scalar_type() == at::kFloat || a.v.scalar_type() == at::kDouble ||
                  a.v.device().is_cuda(),
              "v: expected dtype float32 or float64 on CPU, got ", a.v.scalar_type());
  p.B = a.v.size(0);
  p.H = a.v.size(1);
  p.M = a.v.size(2);
  p.Dv = a.v.size(3);
  TORCH_CHECK(std::isfinite(a.scale), "scale: expected a finite number, got ", a.scale);

  // Padded keys: their k / v / t rows are replaced by zeros, so that whatever
  // they hold (NaN, inf) cannot reach the outputs or gradients through a
  // 0 * NaN in the products; their logits are -inf through key_bias.
  at::Tensor pad;  // (B, M) bool
  if (a.key_padding_mask.has_value()) {
    pad = *a.key_padding_mask;
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

  at::Tensor vc = drop_padded(a.v).contiguous();
  p.v = keep(vc);
  if (backward && key_tile > 0) p.vT = keep(key_tiles_transposed(vc, key_tile));

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
    at::Tensor kc = drop_padded(*a.k).contiguous();
    p.k = keep(kc);
    if (key_tile > 0) p.kT = keep(key_tiles_transposed(kc, key_tile));
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
      // the kernels vectorize over keys
      at::Tensor te = drop_padded(batch_expand(*a.t, p.B, "t"));
      p.tT = keep_aux(key_tile > 0 ? key_tiles_transposed(te, key_tile) : te);
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

  // per-key bias (padding, log weights) and scale (`none` mode weights)
  const auto opts = a.v.options().dtype(aux_type);
  at::Tensor key_bias;
  if (a.key_weight.has_value()) {
    const at::Tensor& w = *a.key_weight;
    check_same(w, a.v, "key_weight");
    TORCH_CHECK(w.dim() == 2 && (w.size(0) == p.B || w.size(0) == 1) && w.size(1) == p.M,
                "key_weight: expected shape (", p.B, " or 1, ", p.M, "), got ", shape_str(w));
    TORCH_CHECK((w > 0).logical_and(w.isfinite()).all().item<bool>(),
                "key_weight: expected finite positive weights");
    at::Tensor we = w.to(aux_type).expand({p.B, p.M}).contiguous();
    if (a.softmax) {
      key_bias = we.log();
    } else {
      p.key_scale = keep(we);
    }
  }
  if (pad.defined()) {
    at::Tensor padbias = at::zeros({p.B, p.M}, opts).masked_fill(pad, neg_inf<double>());
    key_bias = key_bias.defined() ? key_bias + padbias : padbias;
  }
  if (key_bias.defined()) p.key_bias = keep(key_bias.contiguous());

  if (a.attn_mask.has_value()) {
    at::Tensor am = *a.attn_mask;
    TORCH_CHECK(am.device() == a.v.device(), "attn_mask: expected a tensor on ", a.v.device());
    TORCH_CHECK(am.dim() <= 4, "attn_mask: expected at most 4 dims (broadcastable to (B, H, N, M)), got ",
                shape_str(am));
    if (am.scalar_type() == at::kBool) {
      am = at::zeros(am.sizes(), opts).masked_fill(am.logical_not(), neg_inf<double>());
    } else {
      TORCH_CHECK(at::isFloatingType(am.scalar_type()),
                  "attn_mask: expected a bool or floating-point tensor, got ", am.scalar_type());
      am = am.to(opts.dtype());
    }
    std::vector<int64_t> full = {p.B, p.H, p.N, p.M};
    at::Tensor ex;
    try {
      ex = am.expand(full);
    } catch (const c10::Error&) {
      TORCH_CHECK(false, "attn_mask: shape ", shape_str(*a.attn_mask),
                  " is not broadcastable to (B, H, N, M) = (", p.B, ", ", p.H, ", ", p.N, ", ",
                  p.M, ")");
    }
    for (int d = 0; d < 4; ++d) p.mask_stride[d] = ex.stride(d);
    p.mask = keep(ex);
  }

  p.softmax = a.softmax;
  p.causal = a.causal;
  return pr;
}

at::Tensor key_weight_grad(at::Tensor per_key, const at::Tensor& key_weight, bool softmax) {
  // the kernels accumulate d/d(log w) in softmax mode (w enters as a logit
  // bias), d/dw in `none` mode
  if (softmax) per_key = per_key / key_weight.to(per_key.scalar_type()).expand(per_key.sizes());
  return reduce_to(per_key, key_weight);
}

Backward prepare_backward(const Prepared& fwd, const GradArgs& g, const DenseArgs& a,
                          int64_t copies) {
  const FwdParams& p = fwd.params;
  check_grad_inputs(g.grad_out, g.out, g.lse, g.grad_lse, a.v, p.N, a.softmax, a.v.scalar_type());
  Backward bw;
  BwdParams& bp = bw.params;
  bp.f = p;
  auto keep = [&](at::Tensor x) {
    bw.keep_alive.push_back(x);
    return x.data_ptr();
  };
  bp.dout = keep(g.grad_out.contiguous());
  if (a.softmax) {
    bp.lse = keep(g.lse.contiguous());
    bp.delta = keep(softmax_delta(g.grad_out, g.out, g.grad_lse).contiguous());
  }

  const auto opts = a.v.options();
  auto make = [&](bool given, std::vector<int64_t> shape, bool per_copy) {
    if (!given) return at::empty({0}, opts);
    if (per_copy) shape.insert(shape.begin(), copies);
    return at::zeros(shape, opts);
  };
  const bool mlp = p.mlp;
  bw.dk = make(p.content, {p.B, p.H, p.M, p.Dk}, false);
  bw.dv = make(true, {p.B, p.H, p.M, p.Dv}, false);
  bw.dt = make(mlp && a.t.has_value(), {p.B, p.M, p.R}, false);
  bw.dq = make(p.content, {p.B, p.H, p.N, p.Dk}, true);
  bw.du = make(mlp && a.u.has_value(), {p.B, p.N, p.R}, true);
  bw.dW2 = make(mlp, {p.H, p.R}, true);
  bw.db2 = make(mlp && a.b2.has_value(), {p.H}, true);
  bw.dE = make(mlp && a.offset_table.has_value(), {p.O, p.R}, true);
  bw.dkw = make(a.key_weight.has_value(), {p.B, p.M}, true);
  // the kernels only touch a gradient buffer whose input has elements
  auto ptr = [](const at::Tensor& x) { return x.numel() ? x.data_ptr() : nullptr; };
  bp.dk = ptr(bw.dk);
  bp.dv = ptr(bw.dv);
  bp.dt = ptr(bw.dt);
  bp.dq = ptr(bw.dq);
  bp.du = ptr(bw.du);
  bp.dW2 = ptr(bw.dW2);
  bp.db2 = ptr(bw.db2);
  bp.dE = ptr(bw.dE);
  bp.dkw = ptr(bw.dkw);
  bp.need_dkw = bp.dkw != nullptr;
  return bw;
}

GradTuple Backward::finish(const DenseArgs& a) const {
  const FwdParams& p = params.f;
  auto total = [](const at::Tensor& x) { return x.dim() > 1 ? x.sum(0) : x; };
  at::Tensor gdu = total(du), gdt = dt, gkw = total(dkw);
  if (a.u.has_value() && du.dim() > 1) gdu = reduce_to(gdu, *a.u);
  if (a.t.has_value() && dt.dim() > 1) gdt = reduce_to(gdt, *a.t);
  if (a.key_weight.has_value() && dkw.dim() > 1) gkw = key_weight_grad(gkw, *a.key_weight, p.softmax);
  return {total(dq), dk, dv, gdu, gdt, total(dW2), total(db2), total(dE), gkw};
}

}  // namespace dense
}  // namespace itnet
