#include "sparse/prepare.h"

#include "common/grad.h"
#include "common/math.h"
#include "common/prepare_terms.h"

namespace itnet {
namespace sparse {
namespace {

void check_index_tensor(const at::Tensor& x, const at::Tensor& v, const char* name,
                        const char* layout) {
  TORCH_CHECK(x.dim() == 2, name, ": expected a 2-D tensor ", layout, ", got shape ",
              shape_str(x));
  TORCH_CHECK(x.scalar_type() == at::kLong, name, ": expected dtype torch.int64, got ",
              x.scalar_type());
  TORCH_CHECK(x.device() == v.device(), name, ": expected a tensor on ", v.device(),
              " (the device of v), got ", x.device());
}

// The data checks of the pair list (one device sync): row_ptr starts at 0,
// never decreases and ends inside col_idx; entries past row_ptr[b, N] are
// padding and never read. Present pairs name keys in [0, M); absent ones
// (log_w = -inf) may hold -1.
void check_pair_values(const at::Tensor& row_ptr, const at::Tensor& col_idx,
                       const c10::optional<at::Tensor>& log_w, int64_t M) {
  const int64_t B = row_ptr.size(0), E = col_idx.size(1);
  if (B == 0) return;
  TORCH_CHECK(!(row_ptr.select(1, 0) != 0).any().item<bool>(),
              "row_ptr: expected row_ptr[b, 0] = 0 for every b");
  TORCH_CHECK(!(row_ptr.narrow(1, 1, row_ptr.size(1) - 1) <
                row_ptr.narrow(1, 0, row_ptr.size(1) - 1))
                   .any()
                   .item<bool>(),
              "row_ptr: expected non-decreasing rows");
  const at::Tensor last = row_ptr.select(1, row_ptr.size(1) - 1);
  TORCH_CHECK(!(last > E).any().item<bool>(), "row_ptr: expected row_ptr[b, N] <= E = ", E,
              " (the width of col_idx)");
  if (E == 0) return;
  // Fast paths, one pass each and no pair-sized temporaries: every log-weight below +inf
  // (max is NaN if any is NaN) and every key in [0, M) (or -1 only where log_w is -inf).
  // The exact checks below, restricted to the listed entries, only run otherwise.
  const bool lw_ok = !log_w.has_value() || log_w->max().item<double>() < pos_inf<double>();
  const auto mm = at::aminmax(col_idx);
  const int64_t kmin = std::get<0>(mm).item<int64_t>(), kmax = std::get<1>(mm).item<int64_t>();
  if (lw_ok && kmin >= 0 && kmax < M) return;
  const at::Tensor listed = at::arange(E, row_ptr.options()).unsqueeze(0) < last.unsqueeze(1);
  at::Tensor present = listed;
  if (log_w.has_value()) {
    const at::Tensor& lw = *log_w;
    TORCH_CHECK(!(lw.isnan().logical_and(listed)).any().item<bool>(),
                "log_w: contains NaN (expected finite log-weights, or -inf for an absent pair)");
    TORCH_CHECK(!((lw == pos_inf<double>()).logical_and(listed)).any().item<bool>(),
                "log_w: contains +inf (expected finite log-weights, or -inf for an absent pair)");
    present = listed.logical_and(lw != neg_inf<double>());
  }
  const at::Tensor out_of_range = (col_idx < 0).logical_or(col_idx >= M);
  TORCH_CHECK(!out_of_range.logical_and(present).any().item<bool>(),
              "col_idx: expected key indices in [0, M) = [0, ", M, ") for every present pair");
  TORCH_CHECK(!(col_idx < -1).logical_or(col_idx >= M).logical_and(listed).any().item<bool>(),
              "col_idx: expected key indices in [0, M) = [0, ", M,
              "), or -1 where log_w is -inf");
}

}  // namespace

Prepared prepare(const SparseArgs& a, bool key_major) {
  const at::Tensor& v = a.v;
  const at::Tensor& row_ptr = a.row_ptr;
  const at::Tensor& col_idx = a.col_idx;
  const c10::optional<at::Tensor>& log_w = a.log_w;
  TORCH_CHECK(v.scalar_type() == at::kFloat || v.scalar_type() == at::kDouble,
              "v: expected dtype float32 or float64 (the sparse op's kernels), got ",
              v.scalar_type());
  check_index_tensor(row_ptr, v, "row_ptr", "(B, N + 1)");
  check_index_tensor(col_idx, v, "col_idx", "(B, E)");
  TORCH_CHECK(row_ptr.size(1) >= 1, "row_ptr: expected shape (B, N + 1), got ",
              shape_str(row_ptr));
  const int64_t N = row_ptr.size(1) - 1;

  PreparedTerms kp = prepare_terms(a, /*key_padding_mask=*/c10::nullopt, /*aux=*/c10::nullopt,
                                   /*n_queries=*/N);
  Prepared pr;
  pr.keep_alive = std::move(kp.keep_alive);
  SparseParams& p = pr.params;
  p.f = kp.params;
  const int64_t B = p.f.B;
  TORCH_CHECK(p.f.N == N, "row_ptr: expected shape (B, N + 1) with N = ", p.f.N,
              " (from q, u or q_pos), got ", shape_str(row_ptr));
  TORCH_CHECK(row_ptr.size(0) == B, "row_ptr: expected batch size B = ", B,
              " (from v), got shape ", shape_str(row_ptr));
  TORCH_CHECK(col_idx.size(0) == B, "col_idx: expected batch size B = ", B,
              " (from v), got shape ", shape_str(col_idx));
  p.E = col_idx.size(1);
  if (log_w.has_value()) {
    const at::Tensor& lw = *log_w;
    TORCH_CHECK(lw.sizes() == col_idx.sizes(), "log_w: expected shape ", shape_str(col_idx),
                " (the shape of col_idx), got ", shape_str(lw));
    TORCH_CHECK(lw.scalar_type() == v.scalar_type(), "log_w: expected dtype ", v.scalar_type(),
                " (the dtype of v), got ", lw.scalar_type());
    TORCH_CHECK(lw.device() == v.device(), "log_w: expected a tensor on ", v.device(),
                " (the device of v), got ", lw.device());
  }
  check_pair_values(row_ptr, col_idx, log_w, p.f.M);

  auto keep = [&](const at::Tensor& x) {
    at::Tensor c = x.contiguous();
    pr.keep_alive.push_back(c);
    return c.data_ptr();
  };
  p.row_ptr = static_cast<const int64_t*>(keep(row_ptr));
  p.col_idx = static_cast<const int64_t*>(keep(col_idx));
  if (log_w.has_value()) p.log_w = keep(*log_w);
  p.key_major = key_major;
  if (key_major) {
    // from the prepared (contiguous) tensors the params point into
    p.v_km = keep(kp.v.transpose(1, 2));
    if (kp.k.defined()) p.k_km = keep(kp.k.transpose(1, 2));
  }
  return pr;
}

Backward prepare_backward(const Prepared& fwd, const GradArgs& g, const SparseArgs& a,
                          int64_t copies) {
  const KernelParams& p = fwd.params.f;
  const at::Tensor& v = a.v;
  const bool softmax = a.softmax;
  check_grad_inputs(g.grad_out, g.out, g.lse, g.grad_lse, v, p.N, softmax, v.scalar_type());
  Backward bw;
  SparseBwdParams& bp = bw.params;
  bp.s = fwd.params;
  auto keep = [&](at::Tensor x) {
    bw.keep_alive.push_back(x);
    return x.data_ptr();
  };
  bp.dout = keep(g.grad_out.contiguous());
  if (softmax) {
    bp.lse = keep(g.lse.contiguous());
    bp.delta = keep(softmax_delta(g.grad_out, g.out, g.grad_lse).contiguous());
  }
  const auto opts = v.options();
  auto make = [&](bool given, std::vector<int64_t> shape, bool per_copy) {
    if (!given) return at::empty({0}, opts);
    if (per_copy) shape.insert(shape.begin(), copies);
    return at::zeros(shape, opts);
  };
  const bool mlp = p.mlp;
  bw.dq = make(p.content, {p.B, p.H, p.N, p.Dk}, false);
  bw.du = make(mlp && a.u.has_value(), {p.B, p.N, p.R}, false);
  bw.dlog_w = make(a.log_w.has_value(), {p.B, fwd.params.E}, false);
  // the flag, not the pointer: a zero-size tensor (Dv = 0) has a null data pointer
  bw.key_major = fwd.params.key_major;
  if (bw.key_major) {
    bw.dk = make(p.content, {p.B, p.M, p.H, p.Dk}, true);
    bw.dv = make(true, {p.B, p.M, p.H, p.Dv}, true);
  } else {
    bw.dk = make(p.content, {p.B, p.H, p.M, p.Dk}, true);
    bw.dv = make(true, {p.B, p.H, p.M, p.Dv}, true);
  }
  bw.dt = make(mlp && a.t.has_value(), {p.B, p.M, p.R}, true);
  bw.dW2 = make(mlp, {p.H, p.R}, true);
  bw.db2 = make(mlp && a.b2.has_value(), {p.H}, true);
  bw.dE = make(mlp && a.offset_table.has_value(), {p.O, p.R}, true);
  // kernels only touch a gradient buffer that has elements
  auto ptr = [](const at::Tensor& x) { return x.numel() ? x.data_ptr() : nullptr; };
  bp.dq = ptr(bw.dq);
  bp.du = ptr(bw.du);
  bp.dlog_w = ptr(bw.dlog_w);
  bp.dk = ptr(bw.dk);
  bp.dv = ptr(bw.dv);
  bp.dt = ptr(bw.dt);
  bp.dW2 = ptr(bw.dW2);
  bp.db2 = ptr(bw.db2);
  bp.dE = ptr(bw.dE);
  return bw;
}

GradTuple Backward::finish(const SparseArgs& a) const {
  auto total = [](const at::Tensor& x) { return x.dim() > 1 ? x.sum(0) : x; };
  at::Tensor gdu = du, gdt = total(dt);
  if (a.u.has_value() && du.dim() > 1) gdu = reduce_to(gdu, *a.u);
  if (a.t.has_value() && dt.dim() > 1) gdt = reduce_to(gdt, *a.t);
  at::Tensor gdk = total(dk), gdv = total(dv);
  if (key_major) {  // (B, M, H, D) -> the inputs' (B, H, M, D), contiguous
    if (gdk.dim() == 4) gdk = gdk.transpose(1, 2).contiguous();
    gdv = gdv.transpose(1, 2).contiguous();
  }
  return {dq, gdk, gdv, gdu, gdt, total(dW2), total(db2), total(dE), dlog_w};
}

}  // namespace sparse
}  // namespace itnet
