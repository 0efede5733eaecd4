#include "dense/prepare.h"

#include <cmath>
#include <limits>

#include "common/math.h"
#include "common/prepare_terms.h"

namespace itnet {
namespace dense {
namespace {

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
  // the pair kernel (checks, padded keys zeroed, natural layouts), then the
  // dense op's own parts
  PreparedTerms terms = prepare_terms(a, a.key_padding_mask, aux, n_queries);
  Prepared pr;
  pr.keep_alive = std::move(terms.keep_alive);
  FwdParams& p = pr.params;
  static_cast<KernelParams&>(p) = terms.params;
  auto keep = [&](at::Tensor x) {
    pr.keep_alive.push_back(x);
    return x.data_ptr();
  };
  const at::ScalarType aux_type = aux.has_value() ? *aux : a.v.scalar_type();
  const at::Tensor& pad = terms.pad;

  // the CPU kernels' key tiles (t is already in the aux dtype)
  if (key_tile > 0) {
    if (terms.k.defined()) p.kT = keep(key_tiles_transposed(terms.k, key_tile));
    if (backward) p.vT = keep(key_tiles_transposed(terms.v, key_tile));
    if (terms.t.defined()) p.tT = keep(key_tiles_transposed(terms.t, key_tile));
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
