// CUDA entry points of the decay scan: checks (scan/prepare.cpp), the
// time-major staging copies the kernels read (see cuda_kernel.h), output and
// gradient buffers, the kernel launches on the current stream, and the final
// reductions / layout changes / casts back to the inputs' dtype.
//
// Deterministic mode: the backward's only floating atomics are the dphi /
// dpsi sums over the channels of a group (group_size = D / G > 1). Under
// torch.use_deterministic_algorithms(True) every channel writes its own part
// instead (n_parts = group_size partial sums, summed here in a fixed order):
// deterministic, at the price of two float32 buffers of B x D x Rk x T (up to
// 1 GiB together; above that the atomics path runs and reports itself).
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <climits>
#include <tuple>
#include <vector>

#include "common/cuda_launch.h"
#include "scan/cuda_kernel.h"
#include "scan/prepare.h"

namespace itnet {
namespace scan {
namespace {

const at::ScalarType kCudaDtypes[] = {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble};

CudaDtype cuda_dtype(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return CudaDtype::Float;
    case at::kDouble: return CudaDtype::Double;
    case at::kHalf: return CudaDtype::Half;
    case at::kBFloat16: return CudaDtype::BFloat16;
    default: TORCH_CHECK(false, "decay scan (CUDA): unsupported dtype ", s);
  }
}

// The kernels' accumulation type: float64 for float64 inputs, else float32.
at::ScalarType acc_dtype(at::ScalarType s) { return s == at::kDouble ? at::kDouble : at::kFloat; }

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

void check_on_cuda(const at::Tensor& x, const char* op) {
  TORCH_CHECK(ITNET_ON_CUDA(x), op, ": x: expected a CUDA tensor (other inputs are on CUDA), got a ",
              "tensor on ", x.device());
}

// A time-major copy of `view` (time = its last dim) with time padded to Tp,
// the padding zero-filled: every row starts at a multiple of Tp elements.
at::Tensor time_major(const at::Tensor& view, int64_t Tp) {
  std::vector<int64_t> sizes = view.sizes().vec();
  const int64_t T = sizes.back();
  sizes.back() = Tp;
  at::Tensor buf = at::empty(sizes, view.options());
  buf.narrow(-1, 0, T).copy_(view);
  if (Tp > T) buf.narrow(-1, T, Tp - T).zero_();
  return buf;
}

// Points p's inputs at time-major copies (kept alive in `keep`) and picks the
// decay mode; ex.Tp must be set.
void stage_inputs(const Prepared& pr, ScanParams& p, CudaScanExtra& ex,
                  std::vector<at::Tensor>& keep) {
  const int64_t D = p.D, G = p.G, Rk = p.Rk, Tp = ex.Tp;
  keep.push_back(time_major(pr.x.permute({0, 2, 1}), Tp));  // (B, D, Tp)
  p.x = keep.back().data_ptr();
  p.x_s = {D * Tp, 1, Tp};
  keep.push_back(time_major(pr.phi.permute({0, 2, 3, 1}), Tp));  // (B, G, Rk, Tp)
  p.phi = keep.back().data_ptr();
  keep.push_back(time_major(pr.psi.permute({0, 2, 3, 1}), Tp));
  p.psi = keep.back().data_ptr();
  p.phi_s = {G * Rk * Tp, 1, Rk * Tp, Tp};
  p.psi_s = p.phi_s;
  if (p.form == DecayForm::Factored) {
    ex.mode = CudaDecayMode::Factored;
    keep.push_back(time_major(pr.dt.permute({0, 2, 1}), Tp));  // (B, D, Tp)
    p.dt = keep.back().data_ptr();
    p.dt_s = {D * Tp, 1, Tp};
    // A: prepare()'s contiguous (D, Rk) and strides
    return;
  }
  const at::Tensor& ld = pr.log_decay;  // (B | 1, T | 1, D, Rk | 1) contiguous
  const int64_t Bl = ld.size(0), Tl = ld.size(1), Rl = ld.size(3);
  if (Tl == 1) {
    // constant in time: read as it is (prepare()'s strides, 0 on broadcast dims)
    ex.mode = CudaDecayMode::PerState;
    return;
  }
  ex.mode = Rl == 1 ? CudaDecayMode::PerStep : CudaDecayMode::Full;
  keep.push_back(time_major(ld.permute({0, 2, 3, 1}), Tp));  // (B | 1, D, Rk | 1, Tp)
  p.log_decay = keep.back().data_ptr();
  p.ld_sb = Bl > 1 ? D * Rl * Tp : 0;
  p.ld_st = 1;
  p.ld_sd = Rl * Tp;
  p.ld_sr = Rl > 1 ? Tp : 0;
}

void check_smem(int64_t need, int64_t Rk, const char* op) {
  const int64_t limit =
      static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin);
  TORCH_CHECK(need <= limit, op, " (CUDA): a state size Rk = ", Rk, " needs ", need,
              " bytes of shared memory per thread block, more than this GPU's ", limit);
}

void check_grid(const ScanParams& p, const char* op) {
  TORCH_CHECK(p.B * p.D <= INT_MAX, op, " (CUDA): B * D = ", p.B * p.D,
              " is more than one launch supports (", INT_MAX, ")");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> decay_scan_fwd_cuda(
    const at::Tensor& x, const c10::optional<at::Tensor>& log_decay,
    const c10::optional<at::Tensor>& dt, const c10::optional<at::Tensor>& A,
    const at::Tensor& phi, const at::Tensor& psi, const c10::optional<at::Tensor>& skip,
    const c10::optional<at::Tensor>& initial_state, bool checkpoint) {
  constexpr const char* op = "decay_scan_fwd";
  check_on_cuda(x, op);
  // `checkpoint` is a CPU option: the CUDA backward stores its own checkpoints (at its
  // chunk length) when it runs, so the third output is empty here (as the fake kernel says)
  (void)checkpoint;
  const c10::cuda::CUDAGuard guard(x.device());
  Prepared pr = prepare(x, log_decay, dt, A, phi, psi, skip, initial_state, op, kCudaDtypes);
  ScanParams p = pr.params;
  const int64_t B = p.B, T = p.T, D = p.D, Rk = p.Rk;
  const auto opt = x.options();
  if (B == 0 || D == 0 || T == 0) {
    // nothing to scan: the final state is the initial one
    return {at::empty({B, T, D}, opt),
            initial_state.has_value() ? pr.h0.clone() : at::zeros({B, D, Rk}, opt),
            at::empty({0}, opt)};
  }
  check_grid(p, op);
  const CudaDtype dtype = cuda_dtype(x.scalar_type());
  check_smem(cuda_scan_fwd_smem(T, Rk, dtype), Rk, op);

  CudaScanExtra ex;
  ex.Tp = round_up(T, kTimeAlign);
  std::vector<at::Tensor> keep;
  stage_inputs(pr, p, ex, keep);
  at::Tensor y_tm = at::empty({B, D, ex.Tp}, opt);
  at::Tensor h_last = at::empty({B, D, Rk}, opt);
  p.y = y_tm.data_ptr();
  p.y_s = {D * ex.Tp, 1, ex.Tp};
  p.h_last = h_last.data_ptr();
  C10_CUDA_CHECK(cuda_scan_fwd(p, ex, dtype, at::cuda::getCurrentCUDAStream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // `keep` is released on return; the caching allocator keeps the memory for
  // the kernel, which runs on the same stream
  return {y_tm.narrow(2, 0, T).transpose(1, 2).contiguous(), h_last, at::empty({0}, opt)};
}

using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                         at::Tensor, at::Tensor>;

// Gradients of an empty problem (B, D or T == 0) in the inputs' shapes.
Grads empty_grads(const Prepared& pr, const at::Tensor& dh_last, const at::Tensor& x,
                  const c10::optional<at::Tensor>& log_decay, const at::Tensor& phi,
                  const c10::optional<at::Tensor>& skip,
                  const c10::optional<at::Tensor>& initial_state) {
  const ScanParams& p = pr.params;
  const auto opt = x.options();
  // a fresh empty tensor per absent input: outputs of an op must not alias
  const auto none = [&] { return at::empty({0}, opt); };
  const bool factored = p.form == DecayForm::Factored;
  at::Tensor dh0 = none();
  if (initial_state.has_value())  // h_last = h0
    dh0 = dh_last.defined() ? dh_last.clone() : at::zeros({p.B, p.D, p.Rk}, opt);
  return {at::zeros({p.B, p.T, p.D}, opt),
          factored ? none() : at::zeros(log_decay->sizes(), opt),
          factored ? at::zeros({p.B, p.T, p.D}, opt) : none(),
          factored ? at::zeros({p.D, p.Rk}, opt) : none(),
          at::zeros(phi.sizes(), opt),
          at::zeros(phi.sizes(), opt),
          skip.has_value() ? at::zeros({p.D}, opt) : none(),
          dh0};
}

Grads decay_scan_bwd_cuda(const at::Tensor& grad_y, const c10::optional<at::Tensor>& grad_final,
                          const at::Tensor& x, const c10::optional<at::Tensor>& log_decay,
                          const c10::optional<at::Tensor>& dt, const c10::optional<at::Tensor>& A,
                          const at::Tensor& phi, const at::Tensor& psi,
                          const c10::optional<at::Tensor>& skip,
                          const c10::optional<at::Tensor>& initial_state,
                          const c10::optional<at::Tensor>& /*checkpoints: CPU only*/) {
  constexpr const char* op = "decay_scan_bwd";
  check_on_cuda(x, op);
  const c10::cuda::CUDAGuard guard(x.device());
  Prepared pr = prepare(x, log_decay, dt, A, phi, psi, skip, initial_state, op, kCudaDtypes);
  auto [dy, dh_last] = check_cotangents(pr, grad_y, grad_final, op);
  ScanBwdParams p;
  static_cast<ScanParams&>(p) = pr.params;
  const int64_t B = p.B, T = p.T, D = p.D, G = p.G, Rk = p.Rk;
  if (B == 0 || D == 0 || T == 0)
    return empty_grads(pr, dh_last, x, log_decay, phi, skip, initial_state);
  check_grid(p, op);
  const CudaDtype dtype = cuda_dtype(x.scalar_type());
  const auto opt = x.options();
  const auto aopt = opt.dtype(acc_dtype(x.scalar_type()));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  CudaScanExtra ex;
  const int64_t Tp = ex.Tp = round_up(T, kTimeAlign);
  std::vector<at::Tensor> keep;
  stage_inputs(pr, p, ex, keep);
  keep.push_back(time_major(dy.permute({0, 2, 1}), Tp));  // (B, D, Tp)
  p.dy = keep.back().data_ptr();
  p.dy_s = {D * Tp, 1, Tp};
  p.dh_last = dh_last.defined() ? dh_last.data_ptr() : nullptr;

  at::Tensor dx_tm = at::empty({B, D, Tp}, opt);
  p.dx = dx_tm.data_ptr();
  p.dx_s = {D * Tp, 1, Tp};
  at::Tensor dld_tm, ddt_tm, dA_pb, dskip_pb, dh0;
  if (p.form == DecayForm::Tensor) {
    p.dld_T = pr.log_decay.size(1);
    p.dld_R = pr.log_decay.size(3);
    const int64_t ldR = p.dld_R;
    const int64_t ldT = ex.mode == CudaDecayMode::PerState ? 1 : Tp;  // the sum over time
    dld_tm = at::empty({B, D, ldR, ldT}, aopt);
    ex.dld_sb = D * ldR * ldT;
    ex.dld_sd = ldR * ldT;
    ex.dld_sr = ldR > 1 ? ldT : 0;
    p.dld = dld_tm.data_ptr();
  } else {
    ddt_tm = at::empty({B, D, Tp}, opt);
    ex.ddt_sb = D * Tp;
    ex.ddt_sd = Tp;
    p.ddt = ddt_tm.data_ptr();
    dA_pb = at::empty({B, D, Rk}, aopt);
    p.dA = dA_pb.data_ptr();
  }
  if (skip.has_value()) {
    dskip_pb = at::empty({B, D}, aopt);
    p.dskip = dskip_pb.data_ptr();
  }
  if (initial_state.has_value()) {
    dh0 = at::empty({B, D, Rk}, opt);
    p.dh0 = dh0.data_ptr();
  }

  // dphi / dpsi: (n_parts, B, G, Rk, Tp) partial sums over the channels of a group
  // Per-channel parts cost 2 x sizeof(acc) x B D Rk T bytes: taken in deterministic mode
  // up to kMaxPartBytes; beyond, the atomics path, which alertNotDeterministic reports (an
  // error, or a warning with warn_only=True) rather than allocating many GB.
  constexpr int64_t kMaxPartBytes = int64_t(1) << 30;
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const int64_t acc_bytes = static_cast<int64_t>(c10::elementSize(aopt.dtype().toScalarType()));
  const bool parts_fit = 2 * acc_bytes * B * p.D * Rk * Tp <= kMaxPartBytes;
  const int64_t n_parts = p.group_size > 1 && deterministic && parts_fit ? p.group_size : 1;
  const bool atomics = n_parts == 1 && p.group_size > 1;
  if (atomics) at::globalContext().alertNotDeterministic("itnet::decay_scan_bwd (CUDA)");
  // atomics add into zeros; plain stores write every step of every row
  at::Tensor dphi_pp = atomics ? at::zeros({n_parts, B, G, Rk, Tp}, aopt)
                               : at::empty({n_parts, B, G, Rk, Tp}, aopt);
  at::Tensor dpsi_pp = atomics ? at::zeros({n_parts, B, G, Rk, Tp}, aopt)
                               : at::empty({n_parts, B, G, Rk, Tp}, aopt);
  p.dphi = dphi_pp.data_ptr();
  p.dpsi = dpsi_pp.data_ptr();
  p.n_parts = n_parts;
  ex.dpp_spart = B * G * Rk * Tp;
  ex.dpp_sb = G * Rk * Tp;
  ex.dpp_sg = Rk * Tp;
  ex.dpp_sr = Tp;

  // checkpoints: the state before every backward chunk, by the forward kernel
  const CudaScanConfig bcfg = cuda_scan_bwd_config(T);
  const int64_t n_chunks = (T + bcfg.chunk() - 1) / bcfg.chunk();
  at::Tensor ckpt;
  if (n_chunks > 1) {
    TORCH_INTERNAL_ASSERT(bcfg.chunk() % cuda_scan_fwd_config(T).items == 0);
    check_smem(cuda_scan_fwd_smem(T, Rk, dtype), Rk, op);
    ckpt = at::empty({B, D, n_chunks, Rk}, aopt);
    ex.ckpt = ckpt.data_ptr();
    ex.ckpt_every = bcfg.chunk();
    ex.n_ckpt = n_chunks;
    ScanParams fp = p;  // inputs only: no y, no final state
    fp.y = nullptr;
    fp.h_last = nullptr;
    C10_CUDA_CHECK(cuda_scan_fwd(fp, ex, dtype, stream));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  check_smem(cuda_scan_bwd_smem(T, Rk, dtype), Rk, op);
  C10_CUDA_CHECK(cuda_scan_bwd(p, ex, dtype, stream));
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // a fresh empty tensor per absent input: outputs of an op must not alias
  const auto none = [&] { return at::empty({0}, opt); };
  // (B, D, Tp) time-major -> (B, T, D)
  auto from_tm = [T](const at::Tensor& t) {
    return t.narrow(2, 0, T).transpose(1, 2).contiguous();
  };
  auto group_grad = [&](const at::Tensor& pp) {
    const at::Tensor s = n_parts == 1 ? pp[0] : pp.sum(0);  // (B, G, Rk, Tp)
    return at::empty(phi.sizes(), opt).copy_(s.narrow(3, 0, T).permute({0, 3, 1, 2}));
  };
  at::Tensor dld;
  if (dld_tm.defined()) {
    // (B, D, ld_R, ld_T) -> the per-batch (B, ld_T, D, ld_R) of reduce_log_decay_grad
    const at::Tensor pb = ex.mode == CudaDecayMode::PerState ? dld_tm : dld_tm.narrow(3, 0, T);
    dld = reduce_log_decay_grad(pb.permute({0, 3, 1, 2}), *log_decay).contiguous();
  }
  return {from_tm(dx_tm),
          dld.defined() ? dld : none(),
          ddt_tm.defined() ? from_tm(ddt_tm) : none(),
          dA_pb.defined() ? dA_pb.sum(0).to(x.scalar_type()) : none(),
          group_grad(dphi_pp),
          group_grad(dpsi_pp),
          dskip_pb.defined() ? dskip_pb.sum(0).to(x.scalar_type()) : none(),
          dh0.defined() ? dh0 : none()};
}

}  // namespace

ITNET_CUDA_LIBRARY_IMPL(m) {
  m.impl("decay_scan_fwd", &decay_scan_fwd_cuda);
  m.impl("decay_scan_bwd", &decay_scan_bwd_cuda);
}

}  // namespace scan
}  // namespace itnet
