#include "scan/prepare.h"

#include <string>

namespace itnet {
namespace scan {
namespace {

std::string shape_str(const at::Tensor& t) { return c10::str(t.sizes()); }

void check_like_x(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, ": expected a tensor on ", x.device(),
              " (the device of x), got ", t.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, ": expected dtype ",
              x.scalar_type(), " (the dtype of x), got ", t.scalar_type());
}

// A broadcast dimension (size 1) is read with stride 0, so one kernel serves
// every form without materializing the broadcast.
int64_t bstride(const at::Tensor& t, int64_t dim) { return t.size(dim) == 1 ? 0 : t.stride(dim); }

}  // namespace

Prepared prepare(const at::Tensor& x, const c10::optional<at::Tensor>& log_decay,
                 const c10::optional<at::Tensor>& dt, const c10::optional<at::Tensor>& A,
                 const at::Tensor& phi, const at::Tensor& psi,
                 const c10::optional<at::Tensor>& skip,
                 const c10::optional<at::Tensor>& initial_state, const char* op,
                 at::ArrayRef<at::ScalarType> dtypes_ok) {
  TORCH_CHECK(x.dim() == 3, op, ": x: expected shape (B, T, D), got ", shape_str(x));
  bool dtype_ok = false;
  for (auto d : dtypes_ok) dtype_ok = dtype_ok || d == x.scalar_type();
  TORCH_CHECK(dtype_ok, op, ": x: dtype ", x.scalar_type(), " is not supported on ",
              x.device().type(), " (supported: ", c10::str(dtypes_ok), ")");
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2);

  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{"phi", &phi}, {"psi", &psi}}) {
    check_like_x(*t, x, op, name);
    TORCH_CHECK(t->dim() == 4 && t->size(0) == B && t->size(1) == T, op, ": ", name,
                ": expected shape (", B, ", ", T, ", G, Rk), got ", shape_str(*t));
  }
  TORCH_CHECK(phi.sizes() == psi.sizes(), op, ": phi, psi: expected the same shape, got ",
              shape_str(phi), " and ", shape_str(psi));
  const int64_t G = phi.size(2), Rk = phi.size(3);
  TORCH_CHECK(Rk >= 1, op, ": phi: expected a state size Rk >= 1, got ", shape_str(phi));
  TORCH_CHECK(G >= 1 && D % G == 0, op, ": phi, psi: the group count G = ", G,
              " must divide D = ", D);

  Prepared pr;
  ScanParams& p = pr.params;
  p.B = B;
  p.T = T;
  p.D = D;
  p.Rk = Rk;
  p.G = G;
  p.group_size = D / G;

  TORCH_CHECK(log_decay.has_value() != (dt.has_value() || A.has_value()), op,
              ": give either log_decay or the pair (dt, A), not both and not neither");
  if (log_decay.has_value()) {
    const at::Tensor& ld = *log_decay;
    check_like_x(ld, x, op, "log_decay");
    TORCH_CHECK(ld.dim() == 4 && (ld.size(0) == B || ld.size(0) == 1) &&
                    (ld.size(1) == T || ld.size(1) == 1) && ld.size(2) == D &&
                    (ld.size(3) == Rk || ld.size(3) == 1),
                op, ": log_decay: expected shape (", B, " or 1, ", T, " or 1, ", D, ", ", Rk,
                " or 1), got ", shape_str(ld));
    pr.log_decay = ld.contiguous();
    p.form = DecayForm::Tensor;
    p.log_decay = pr.log_decay.data_ptr();
    p.ld_sb = bstride(pr.log_decay, 0);
    p.ld_st = bstride(pr.log_decay, 1);
    p.ld_sd = pr.log_decay.stride(2);
    p.ld_sr = bstride(pr.log_decay, 3);
  } else {
    TORCH_CHECK(dt.has_value() && A.has_value(), op,
                ": the factored log-decay needs both dt and A");
    check_like_x(*dt, x, op, "dt");
    check_like_x(*A, x, op, "A");
    TORCH_CHECK(dt->dim() == 3 && dt->size(0) == B && dt->size(1) == T && dt->size(2) == D, op,
                ": dt: expected shape (", B, ", ", T, ", ", D, "), got ", shape_str(*dt));
    TORCH_CHECK(A->dim() == 2 && A->size(0) == D && A->size(1) == Rk, op, ": A: expected shape (",
                D, ", ", Rk, "), got ", shape_str(*A));
    pr.dt = dt->contiguous();
    pr.A = A->contiguous();
    p.form = DecayForm::Factored;
    p.dt = pr.dt.data_ptr();
    p.dt_s = {T * D, D, 1};
    p.A = pr.A.data_ptr();
    p.A_sd = Rk;
    p.A_sr = 1;
  }

  if (skip.has_value()) {
    check_like_x(*skip, x, op, "skip");
    TORCH_CHECK(skip->dim() == 1 && skip->size(0) == D, op, ": skip: expected shape (", D,
                ",), got ", shape_str(*skip));
    pr.skip = skip->contiguous();
    p.skip = pr.skip.data_ptr();
  }
  if (initial_state.has_value()) {
    check_like_x(*initial_state, x, op, "initial_state");
    TORCH_CHECK(initial_state->dim() == 3 && initial_state->size(0) == B &&
                    initial_state->size(1) == D && initial_state->size(2) == Rk,
                op, ": initial_state: expected shape (", B, ", ", D, ", ", Rk, "), got ",
                shape_str(*initial_state));
    pr.h0 = initial_state->contiguous();
    p.h0 = pr.h0.data_ptr();
  }

  pr.x = x.contiguous();
  pr.phi = phi.contiguous();
  pr.psi = psi.contiguous();
  p.x = pr.x.data_ptr();
  p.x_s = {T * D, D, 1};
  p.phi = pr.phi.data_ptr();
  p.psi = pr.psi.data_ptr();
  p.phi_s = {T * G * Rk, G * Rk, Rk, 1};
  p.psi_s = p.phi_s;
  return pr;
}

std::pair<at::Tensor, at::Tensor> check_cotangents(const Prepared& pr, const at::Tensor& grad_y,
                                                   const c10::optional<at::Tensor>& grad_final,
                                                   const char* op) {
  const ScanParams& p = pr.params;
  check_like_x(grad_y, pr.x, op, "grad_y");
  TORCH_CHECK(grad_y.dim() == 3 && grad_y.size(0) == p.B && grad_y.size(1) == p.T &&
                  grad_y.size(2) == p.D,
              op, ": grad_y: expected shape (", p.B, ", ", p.T, ", ", p.D,
              ") (the shape of x), got ", shape_str(grad_y));
  at::Tensor gf;
  if (grad_final.has_value()) {
    check_like_x(*grad_final, pr.x, op, "grad_final_state");
    TORCH_CHECK(grad_final->dim() == 3 && grad_final->size(0) == p.B &&
                    grad_final->size(1) == p.D && grad_final->size(2) == p.Rk,
                op, ": grad_final_state: expected shape (", p.B, ", ", p.D, ", ", p.Rk, "), got ",
                shape_str(*grad_final));
    gf = grad_final->contiguous();
  }
  return {grad_y.contiguous(), gf};
}

at::Tensor check_checkpoints(const Prepared& pr, const c10::optional<at::Tensor>& checkpoints,
                             const char* op) {
  if (!checkpoints.has_value() || checkpoints->numel() == 0) return at::Tensor();
  const ScanParams& p = pr.params;
  const at::Tensor& c = *checkpoints;
  check_like_x(c, pr.x, op, "checkpoints");
  const int64_t n = num_checkpoints(p.T);
  TORCH_CHECK(c.dim() == 4 && c.size(0) == p.B && c.size(1) == p.D && c.size(2) == n &&
                  c.size(3) == p.Rk,
              op, ": checkpoints: expected the forward's (", p.B, ", ", p.D, ", ", n, ", ", p.Rk,
              "), got ", shape_str(c));
  return c.contiguous();
}

at::Tensor reduce_log_decay_grad(const at::Tensor& per_batch, const at::Tensor& log_decay) {
  at::Tensor g = per_batch;
  if (log_decay.size(0) == 1 && g.size(0) != 1) g = g.sum(0, /*keepdim=*/true);
  return g.to(log_decay.scalar_type()).reshape(log_decay.sizes());
}

}  // namespace scan
}  // namespace itnet
