// CUDA entry points of the dense integral transform, and the choice of
// kernels for a call:
//  - float16 / bfloat16: the flash (tensor-core) kernels of flash/ when they
//    take the call (flash_*_supported: sm_80+, head dims, R, shared memory),
//    else the exact kernels on float32 copies, results cast back (lse stays
//    float32, as the flash kernels return it);
//  - float32 / float64: the exact kernels (cuda_fwd.cu / cuda_bwd.cu), with
//    the same checks, layouts and output conventions as the CPU entry points
//    (prepare() with key_tile = 0).
// Everything runs on the current stream of v's device, without host
// synchronisation beyond prepare()'s data checks.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/cuda_launch.h"
#include "dense/cuda_entry.h"
#include "dense/cuda_kernel.h"

namespace itnet {
namespace dense {
namespace {

bool is_half(at::ScalarType s) { return s == at::kHalf || s == at::kBFloat16; }

void check_cuda_value(const at::Tensor& v) {
  TORCH_CHECK(ITNET_ON_CUDA(v), "v: expected a CUDA tensor (other inputs are on CUDA), got a tensor on ",
              v.device());
  const at::ScalarType s = v.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kDouble || is_half(s),
              "v: expected dtype float16, bfloat16, float32 or float64 on CUDA, got ", s);
}

// float32 copy of one floating-point input of a 16-bit call. The inputs must
// share v's dtype (prepare() checks it on the flash path; here the cast would
// hide a mix), except the attention mask (bool or any float dtype).
c10::optional<at::Tensor> up(const c10::optional<at::Tensor>& x, const at::Tensor& v,
                             const char* name) {
  if (!x.has_value()) return x;
  TORCH_CHECK(name == nullptr || x->scalar_type() == v.scalar_type(), name, ": expected dtype ",
              v.scalar_type(), " (the dtype of v), got ", x->scalar_type());
  return is_half(x->scalar_type()) ? c10::optional<at::Tensor>(x->to(at::kFloat)) : x;
}

DenseArgs upcast(const DenseArgs& a) {
  DenseArgs f = a;
  f.q = up(a.q, a.v, "q");
  f.k = up(a.k, a.v, "k");
  f.v = a.v.to(at::kFloat);
  f.u = up(a.u, a.v, "u");
  f.t = up(a.t, a.v, "t");
  f.W2 = up(a.W2, a.v, "W2");
  f.b2 = up(a.b2, a.v, "b2");
  f.offset_table = up(a.offset_table, a.v, "offset_table");
  f.key_weight = up(a.key_weight, a.v, "key_weight");
  f.attn_mask = up(a.attn_mask, a.v, nullptr);
  return f;
}

GradTuple cast_all(const GradTuple& g, at::ScalarType s) {
  return {std::get<0>(g).to(s), std::get<1>(g).to(s), std::get<2>(g).to(s),
          std::get<3>(g).to(s), std::get<4>(g).to(s), std::get<5>(g).to(s),
          std::get<6>(g).to(s), std::get<7>(g).to(s), std::get<8>(g).to(s)};
}

std::tuple<at::Tensor, at::Tensor> exact_fwd(const DenseArgs& a) {
  Prepared pr = prepare(a, /*key_tile=*/0, /*backward=*/false);
  FwdParams& p = pr.params;
  // the kernel accumulates the output rows in place
  at::Tensor out = at::zeros({p.B, p.H, p.N, p.Dv}, a.v.options());
  at::Tensor lse =
      a.softmax ? at::empty({p.B, p.H, p.N}, a.v.options()) : at::empty({0}, a.v.options());
  p.out = out.data_ptr();
  p.lse = a.softmax ? lse.data_ptr() : nullptr;
  cuda_dense_fwd(p, a.v.scalar_type() == at::kDouble, at::cuda::getCurrentCUDAStream());
  // pr.keep_alive is released here; the caching allocator keeps the memory
  // for the kernel, which runs on the same stream
  return {out, lse};
}

GradTuple exact_bwd(const GradArgs& g, const DenseArgs& a) {
  Prepared pr = prepare(a, /*key_tile=*/0, /*backward=*/true);
  // one gradient buffer each (copies = 1), accumulated with atomics where
  // several warps contribute
  const Backward bw = prepare_backward(pr, g, a, /*copies=*/1);
  // (after the argument checks, whose errors come first)
  at::globalContext().alertNotDeterministic(
      "itnet::dense_bwd (CUDA exact kernels: float32 / float64, or float16 / bfloat16 beyond "
      "the tensor-core kernels' limits)");
  cuda_dense_bwd(bw.params, a.v.scalar_type() == at::kDouble, at::cuda::getCurrentCUDAStream());
  return bw.finish(a);
}

std::tuple<at::Tensor, at::Tensor> dense_fwd_cuda(const DenseArgs& a) {
  check_cuda_value(a.v);
  const c10::cuda::CUDAGuard guard(a.v.device());
  const at::ScalarType s = a.v.scalar_type();
  if (!is_half(s)) return exact_fwd(a);
  if (flash_fwd_supported(a)) return flash_dense_fwd(a);
  auto res = exact_fwd(upcast(a));
  return {std::get<0>(res).to(s), std::get<1>(res)};
}

GradTuple dense_bwd_cuda(const GradArgs& g, const DenseArgs& a) {
  check_cuda_value(a.v);
  const c10::cuda::CUDAGuard guard(a.v.device());
  const at::ScalarType s = a.v.scalar_type();
  if (!is_half(s)) return exact_bwd(g, a);
  if (flash_bwd_supported(a)) return flash_dense_bwd(g, a);
  // exact kernels on float32 copies; lse (and grad_lse) are float32 already
  TORCH_CHECK(g.grad_out.scalar_type() == s && g.out.scalar_type() == s,
              "grad_out, out: expected dtype ", s, " (the dtype of v), got ",
              g.grad_out.scalar_type(), ", ", g.out.scalar_type());
  GradArgs gf{g.grad_out.to(at::kFloat), g.out.to(at::kFloat), g.lse, g.grad_lse};
  return cast_all(exact_bwd(gf, upcast(a)), s);
}

}  // namespace

ITNET_CUDA_LIBRARY_IMPL(m) {
  m.impl("dense_fwd", &OpEntry<DenseArgs>::fwd<&dense_fwd_cuda>);
  m.impl("dense_bwd", &OpEntry<DenseArgs>::bwd<&dense_bwd_cuda>);
}

}  // namespace dense
}  // namespace itnet
