// ATen-level entry of the flash kernels (float16 / bfloat16 on sm_80+):
// which calls they take, the layouts they need (head dims padded to a
// multiple of 8, 16-byte aligned rows, float32 side operands through
// prepare()'s aux dtype), and the reduction of the backward's partial sums
// (FlashGrads) in a fixed order.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "common/cuda_launch.h"
#include "dense/cuda_entry.h"
#include "dense/flash/flash.h"

namespace itnet {
namespace dense {
namespace {

int64_t pad8(int64_t d) { return (d + 7) / 8 * 8; }

// Zero columns up to a multiple of 8 (they add nothing to q.k and give zero
// output columns), contiguous, 16-byte aligned: what cp.async reads.
at::Tensor for_tiles(const at::Tensor& x) {
  at::Tensor y = x;
  const int64_t d = x.size(-1);
  if (pad8(d) != d) y = at::constant_pad_nd(x, {0, pad8(d) - d});
  y = y.contiguous();
  if (reinterpret_cast<std::uintptr_t>(y.data_ptr()) % 16 != 0) y = y.clone();
  return y;
}

c10::optional<at::Tensor> for_tiles(const c10::optional<at::Tensor>& x) {
  if (!x.has_value()) return x;
  return for_tiles(*x);
}

// Only what the shared-memory size depends on.
FwdParams size_params(const DenseArgs& a) {
  FwdParams p;
  p.content = a.q.has_value();
  p.Dk = a.q.has_value() ? pad8(a.q->size(-1)) : 0;
  p.Dv = pad8(a.v.size(-1));
  p.mlp = a.W2.has_value();
  p.R = a.W2.has_value() ? a.W2->size(-1) : 0;
  static const char kTable = 0;
  p.E = a.offset_table.has_value() ? &kTable : nullptr;
  p.O = a.offset_table.has_value() ? a.offset_table->size(0) : 0;
  return p;
}

bool supported(const DenseArgs& a, bool backward) {
  const at::Tensor& v = a.v;
  if (v.scalar_type() != at::kHalf && v.scalar_type() != at::kBFloat16) return false;
  if (!ITNET_ON_CUDA(v) || v.dim() != 4) return false;  // the exact path reports bad shapes
  if (a.q.has_value() && (a.q->dim() != 4 || !a.k.has_value() || a.k->dim() != 4)) return false;
  if (a.W2.has_value() && a.W2->dim() != 2) return false;
  if (a.offset_table.has_value() && a.offset_table->dim() != 2) return false;
  // ITNET_CUDA_FLASH=0: every call on the exact kernels (debugging, A/B checks)
  const char* env = std::getenv("ITNET_CUDA_FLASH");
  if (env != nullptr && std::strcmp(env, "0") == 0) return false;
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(v.device().index());
  if (prop->major < 8) return false;
  const FwdParams p = size_params(a);
  const int64_t dmax = backward ? flash::kMaxHeadDimBwd : flash::kMaxHeadDimFwd;
  if (p.Dk > dmax || p.Dv > dmax || p.R > flash::kMaxR || p.O * p.R > flash::kMaxTable)
    return false;
  if (v.size(0) > 65535 || v.size(1) > 65535) return false;  // grid y, z
  // (dynamic plus static shared memory: the backward's key pass has its db2 partials)
  const int64_t smem = backward ? flash::bwd_smem_bytes(p, a.offset_table.has_value())
                                : flash::fwd_smem_bytes(p);
  return smem <= static_cast<int64_t>(prop->sharedMemPerBlockOptin);
}

flash::Dtype flash_dtype(const at::Tensor& v) {
  return v.scalar_type() == at::kHalf ? flash::Dtype::Half : flash::Dtype::BFloat16;
}

DenseArgs tiled(const DenseArgs& a) {
  DenseArgs t = a;
  t.q = for_tiles(a.q);
  t.k = for_tiles(a.k);
  t.v = for_tiles(a.v);
  return t;
}

at::Tensor unpad(const at::Tensor& x, int64_t d) {
  return x.size(-1) == d ? x : x.narrow(-1, 0, d).contiguous();
}

// rowsum(a * b) over the last dim in float32, (B, H, N), from 16-bit a, b. The
// float32 copies and their product are made a slab of rows at a time, so that
// the temporaries stay bounded (3 x 4 x 2^24 bytes) instead of growing with dO.
at::Tensor row_dot_f32(const at::Tensor& a, const at::Tensor& b) {
  const int64_t D = a.size(-1);
  if (D == 0 || a.numel() == 0)
    return at::zeros(a.sizes().slice(0, a.dim() - 1), a.options().dtype(at::kFloat));
  at::Tensor a2 = a.reshape({-1, D}), b2 = b.reshape({-1, D});
  const int64_t rows = a2.size(0);
  at::Tensor out = at::empty({rows}, a.options().dtype(at::kFloat));
  const int64_t step = std::max<int64_t>(1, (int64_t(1) << 24) / std::max<int64_t>(D, 1));
  for (int64_t r = 0; r < rows; r += step) {
    const int64_t n = std::min(step, rows - r);
    at::Tensor slab = out.narrow(0, r, n);
    at::sum_out(slab, a2.narrow(0, r, n).to(at::kFloat) * b2.narrow(0, r, n).to(at::kFloat), {-1});
  }
  return out.view(a.sizes().slice(0, a.dim() - 1));
}

}  // namespace

bool flash_fwd_supported(const DenseArgs& a) { return supported(a, false); }
bool flash_bwd_supported(const DenseArgs& a) { return supported(a, true); }

std::tuple<at::Tensor, at::Tensor> flash_dense_fwd(const DenseArgs& a) {
  const DenseArgs at_ = tiled(a);
  Prepared pr = prepare(at_, /*key_tile=*/0, /*backward=*/false, at::kFloat);
  FwdParams& p = pr.params;
  const auto f32 = a.v.options().dtype(at::kFloat);
  at::Tensor out = at::empty({p.B, p.H, p.N, p.Dv}, a.v.options());
  at::Tensor lse = a.softmax ? at::empty({p.B, p.H, p.N}, f32) : at::empty({0}, f32);
  p.out = out.data_ptr();
  p.lse = a.softmax ? lse.data_ptr() : nullptr;
  flash::fwd(p, flash_dtype(a.v), at::cuda::getCurrentCUDAStream());
  return {unpad(out, a.v.size(-1)), lse};
}

GradTuple flash_dense_bwd(const GradArgs& g, const DenseArgs& a) {
  const DenseArgs at_ = tiled(a);
  Prepared pr = prepare(at_, /*key_tile=*/0, /*backward=*/true, at::kFloat);
  const FwdParams& p = pr.params;
  check_grad_inputs(g.grad_out, g.out, g.lse, g.grad_lse, a.v, p.N, a.softmax, at::kFloat);
  const bool mlp = p.mlp;
  const bool want_dE = mlp && a.offset_table.has_value();
  if (want_dE) {  // (after the argument checks, whose errors come first)
    at::globalContext().alertNotDeterministic(
        "itnet::dense_bwd (CUDA, float16/bfloat16) gradient of offset_table");
  }
  BwdParams bp;
  bp.f = p;
  const at::Tensor dout = for_tiles(g.grad_out);
  bp.dout = dout.data_ptr();
  at::Tensor lse, delta;
  if (a.softmax) {
    // FlashAttention's D = rowsum(dO * O); a gradient on lse shifts it
    delta = row_dot_f32(g.grad_out, g.out);
    if (g.grad_lse.has_value() && g.grad_lse->defined()) delta = delta - *g.grad_lse;
    delta = delta.contiguous();
    lse = g.lse.contiguous();
    bp.lse = lse.data_ptr();
    bp.delta = delta.data_ptr();
  }

  const auto opts = a.v.options();
  const auto f32 = opts.dtype(at::kFloat);
  const int64_t nkt = flash::bwd_key_tiles(p);
  auto buf = [&](bool given, std::vector<int64_t> shape, const at::TensorOptions& o) {
    return given ? at::empty(shape, o) : at::Tensor();
  };
  at::Tensor dq = buf(p.content, {p.B, p.H, p.N, p.Dk}, opts);
  at::Tensor dk = buf(p.content, {p.B, p.H, p.M, p.Dk}, opts);
  at::Tensor dv = buf(true, {p.B, p.H, p.M, p.Dv}, opts);
  at::Tensor du = buf(mlp && a.u.has_value(), {p.H, p.B, p.N, p.R}, f32);
  at::Tensor dt = buf(mlp && a.t.has_value(), {p.H, p.B, p.M, p.R}, f32);
  at::Tensor dW2 = buf(mlp, {p.B, p.H, nkt, p.R}, f32);
  at::Tensor db2 = buf(mlp && a.b2.has_value(), {p.B, p.H, nkt}, f32);
  at::Tensor dkw = buf(a.key_weight.has_value(), {p.H, p.B, p.M}, f32);
  at::Tensor dE = want_dE ? at::zeros({p.O, p.R}, f32) : at::Tensor();
  auto ptr = [](const at::Tensor& x) { return x.defined() && x.numel() ? x.data_ptr() : nullptr; };
  flash::FlashGrads G;
  G.dq = ptr(dq);
  G.dk = ptr(dk);
  G.dv = ptr(dv);
  G.du = static_cast<float*>(ptr(du));
  G.dt = static_cast<float*>(ptr(dt));
  G.dW2 = static_cast<float*>(ptr(dW2));
  G.db2 = static_cast<float*>(ptr(db2));
  G.dkw = static_cast<float*>(ptr(dkw));
  G.dE = static_cast<float*>(ptr(dE));
  G.key_tiles = nkt;
  flash::bwd(bp, G, flash_dtype(a.v), at::cuda::getCurrentCUDAStream());

  // fixed-order reductions of the partial sums (deterministic)
  const at::ScalarType dtype = a.v.scalar_type();
  const at::Tensor none = at::empty({0}, opts);
  auto out = [&](const at::Tensor& x) { return x.defined() ? x.to(dtype) : none; };
  at::Tensor gq = p.content ? unpad(dq, a.q->size(-1)) : none;
  at::Tensor gk = p.content ? unpad(dk, a.k->size(-1)) : none;
  at::Tensor gv = unpad(dv, a.v.size(-1));
  at::Tensor gu = du.defined() ? reduce_to(du.sum(0), *a.u) : du;
  at::Tensor gt = dt.defined() ? reduce_to(dt.sum(0), *a.t) : dt;
  at::Tensor gW2 = dW2.defined() ? dW2.sum(at::IntArrayRef{0, 2}) : dW2;
  at::Tensor gb2 = db2.defined() ? db2.sum(at::IntArrayRef{0, 2}) : db2;
  // (B, M) per key, summed over heads
  at::Tensor gkw = dkw.defined() ? key_weight_grad(dkw.sum(0), *a.key_weight, a.softmax) : dkw;
  return {gq, gk, gv, out(gu), out(gt), out(gW2), out(gb2), out(dE), out(gkw)};
}

}  // namespace dense
}  // namespace itnet
