// CPU entry points of the decay scan: checks (scan/prepare.cpp), output and
// gradient buffers, the parallel loop over work items (batch x group x
// channel block, see cpu_kernel.h) and the fixed-order reductions of the
// per-batch / per-block partial sums (so the backward is deterministic).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>

#include "common/capability.h"
#include "scan/cpu_kernel.h"
#include "scan/prepare.h"

namespace itnet {
namespace scan {
namespace {

CpuKernelTable cpu_kernels() { return ITNET_CPU_KERNEL_TABLE(); }

const at::ScalarType kCpuDtypes[] = {at::kFloat, at::kDouble};

std::tuple<at::Tensor, at::Tensor, at::Tensor> decay_scan_fwd_cpu(
    const at::Tensor& x, const c10::optional<at::Tensor>& log_decay,
    const c10::optional<at::Tensor>& dt, const c10::optional<at::Tensor>& A,
    const at::Tensor& phi, const at::Tensor& psi, const c10::optional<at::Tensor>& skip,
    const c10::optional<at::Tensor>& initial_state, bool checkpoint) {
  Prepared pr = prepare(x, log_decay, dt, A, phi, psi, skip, initial_state, "decay_scan_fwd",
                        kCpuDtypes);
  ScanParams& p = pr.params;
  at::Tensor y = at::empty({p.B, p.T, p.D}, x.options());
  at::Tensor h_last = at::empty({p.B, p.D, p.Rk}, x.options());
  p.y = y.data_ptr();
  p.y_s = {p.T * p.D, p.D, 1};
  p.h_last = h_last.data_ptr();
  at::Tensor ckpt = checkpoint ? at::empty({p.B, p.D, num_checkpoints(p.T), p.Rk}, x.options())
                               : at::empty({0}, x.options());
  p.ckpt = checkpoint ? ckpt.data_ptr() : nullptr;
  const CpuWork w = cpu_work(p, at::get_num_threads());
  const FwdFn fn = x.scalar_type() == at::kDouble ? cpu_kernels().fwd_f64 : cpu_kernels().fwd_f32;
  if (p.B * p.D > 0)
    at::parallel_for(0, w.items(p), 1, [&](int64_t b, int64_t e) { fn(p, w, b, e); });
  return {y, h_last, ckpt};
}

using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                         at::Tensor, at::Tensor>;

Grads decay_scan_bwd_cpu(const at::Tensor& grad_y, const c10::optional<at::Tensor>& grad_final,
                         const at::Tensor& x, const c10::optional<at::Tensor>& log_decay,
                         const c10::optional<at::Tensor>& dt, const c10::optional<at::Tensor>& A,
                         const at::Tensor& phi, const at::Tensor& psi,
                         const c10::optional<at::Tensor>& skip,
                         const c10::optional<at::Tensor>& initial_state,
                         const c10::optional<at::Tensor>& checkpoints) {
  Prepared pr = prepare(x, log_decay, dt, A, phi, psi, skip, initial_state, "decay_scan_bwd",
                        kCpuDtypes);
  auto [dy, dh_last] = check_cotangents(pr, grad_y, grad_final, "decay_scan_bwd");
  const at::Tensor ckpt = check_checkpoints(pr, checkpoints, "decay_scan_bwd");
  ScanBwdParams p;
  static_cast<ScanParams&>(p) = pr.params;
  const int64_t B = p.B, T = p.T, D = p.D, G = p.G, Rk = p.Rk;
  const auto opt = x.options();
  const CpuWork w = cpu_work(p, at::get_num_threads());

  at::Tensor dx = at::empty({B, T, D}, opt);
  at::Tensor dld, ddt, dA, dskip;
  if (p.form == DecayForm::Tensor) {
    p.dld_T = pr.log_decay.size(1);
    p.dld_R = pr.log_decay.size(3);
    dld = at::empty({B, p.dld_T, D, p.dld_R}, opt);
    p.dld = dld.data_ptr();
  } else {
    ddt = at::empty({B, T, D}, opt);
    dA = at::empty({B, D, Rk}, opt);
    p.ddt = ddt.data_ptr();
    p.dA = dA.data_ptr();
  }
  // every item adds into its part, so the partial sums start at 0
  at::Tensor dphi = at::zeros({w.blocks_per_group, B, T, G, Rk}, opt);
  at::Tensor dpsi = at::zeros({w.blocks_per_group, B, T, G, Rk}, opt);
  at::Tensor dh0 = at::empty({B, D, Rk}, opt);
  if (skip.has_value()) {
    dskip = at::empty({B, D}, opt);
    p.dskip = dskip.data_ptr();
  }
  p.dy = dy.data_ptr();
  p.dy_s = {T * D, D, 1};
  p.dh_last = dh_last.defined() ? dh_last.data_ptr() : nullptr;
  p.ckpt_in = ckpt.defined() ? ckpt.data_ptr() : nullptr;
  p.dx = dx.data_ptr();
  p.dx_s = {T * D, D, 1};
  p.dphi = dphi.data_ptr();
  p.dpsi = dpsi.data_ptr();
  p.n_parts = w.blocks_per_group;
  p.dh0 = dh0.data_ptr();

  const BwdFn fn = x.scalar_type() == at::kDouble ? cpu_kernels().bwd_f64 : cpu_kernels().bwd_f32;
  if (B * D > 0)  // (D = 0 would make empty channel blocks)
    at::parallel_for(0, w.items(p), 1, [&](int64_t b, int64_t e) { fn(p, w, b, e); });

  // a fresh empty tensor per absent input: outputs of an op must not alias
  const auto none = [&] { return at::empty({0}, opt); };
  return {dx,
          dld.defined() ? reduce_log_decay_grad(dld, *log_decay) : none(),
          ddt.defined() ? ddt : none(),
          dA.defined() ? dA.sum(0) : none(),
          w.blocks_per_group == 1 ? dphi[0] : dphi.sum(0),
          w.blocks_per_group == 1 ? dpsi[0] : dpsi.sum(0),
          dskip.defined() ? dskip.sum(0) : none(),
          initial_state.has_value() ? dh0 : none()};
}

}  // namespace

TORCH_LIBRARY_IMPL(itnet, CPU, m) {
  m.impl("decay_scan_fwd", &decay_scan_fwd_cpu);
  m.impl("decay_scan_bwd", &decay_scan_bwd_cpu);
}

}  // namespace scan
}  // namespace itnet
