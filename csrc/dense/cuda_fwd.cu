// CUDA forward of the dense integral transform: the simple exact kernel.
//
// One warp per query row (b, h, i). The keys of the row are visited 32 at a
// time, lane x evaluating the logit of key j0 + x (pair_logit: content dot
// product, pair MLP, key bias, mask, support). In softmax mode the warp keeps
// the online-softmax state (running max m, sum l) in registers, identical in
// every lane; the output row lives in `out` itself (owned by the warp, lane x
// owning the columns d = x mod 32), rescaled when the max moves and finished
// with 1 / l. `none` mode accumulates a = l * w. Nothing of size N x M is
// materialised; Dv, Dk, R and H are unbounded.
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <climits>

#include "common/dispatch.h"
#include "dense/cuda_kernel.h"
#include "dense/cuda_pair.cuh"
#include "common/cuda_launch.h"

namespace itnet {
namespace dense {
namespace cuda {
namespace {

constexpr int kFwdWarps = 4;  // rows per block

template <class T, Activation A>
__global__ void __launch_bounds__(kFwdWarps* kWarp) dense_fwd_kernel(const FwdParams p) {
  ITNET_SHARED(T, s_weight, [kFwdWarps][kWarp]);
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kFwdWarps + warp;  // (b, h, i)
  if (row >= p.B * p.H * p.N) return;  // whole warps only; no block barrier below
  const int64_t i = row % p.N;
  const int64_t bh = row / p.N;
  const int64_t h = bh % p.H;
  const int64_t b = bh / p.H;
  const int64_t Dv = p.Dv;
  const int64_t jend = p.causal ? (i + 1 < p.M ? i + 1 : p.M) : p.M;
  const T ninf = neg_inf<T>();
  const T* v = cptr<T>(p.v) + bh * p.M * Dv;
  const T* kscale = p.key_scale ? cptr<T>(p.key_scale) + b * p.M : nullptr;
  T* out = static_cast<T*>(p.out) + row * Dv;
  T* wsm = s_weight[warp];

  T m = ninf;  // online softmax state, the same in every lane
  T l = T(0);
  for (int64_t j0 = 0; j0 < jend; j0 += kWarp) {
    const int64_t j = j0 + lane;
    int64_t erow = 0;
    bool on = false;
    const T s = j < jend ? pair_logit<T, A>(p, b, h, i, j, erow, on) : ninf;
    T a = T(0);
    T alpha = T(1);
    if (p.softmax) {
      const T cm = warp_max(s);
      if (cm == ninf) continue;  // no key of this chunk in the support
      const T m_new = cm > m ? cm : m;
      alpha = softmax_rescale(m, m_new);
      a = Ops<T>::exp(s - softmax_shift(m_new));
      l = l * alpha + warp_sum(a);
      m = m_new;
    } else {
      if (on) a = s * (kscale ? kscale[j] : T(1));
      if (!__any_sync(kFullMask, a != T(0))) continue;
    }
    __syncwarp();  // previous chunk's weights fully read
    wsm[lane] = a;
    __syncwarp();
    const int cnt = static_cast<int>(jend - j0 < kWarp ? jend - j0 : kWarp);
    for (int64_t d = lane; d < Dv; d += kWarp) {
      T acc = T(0);
      for (int jj = 0; jj < cnt; ++jj) {
        const T aj = wsm[jj];
        if (aj != T(0)) acc += aj * v[(j0 + jj) * Dv + d];
      }
      out[d] = out[d] * alpha + acc;
    }
  }
  if (p.softmax) {
    const T inv = softmax_inv_sum(l);
    for (int64_t d = lane; d < Dv; d += kWarp) out[d] *= inv;
    if (lane == 0) static_cast<T*>(p.lse)[row] = softmax_lse(m, l);
  }
}

template <class T, Activation A>
void launch(const FwdParams& p, int64_t blocks, cudaStream_t stream) {
  ITNET_LAUNCH(static_cast<unsigned>(blocks), kFwdWarps * kWarp, 0, stream,
               dense_fwd_kernel<T, A>)(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <class T>
void launch_act(const FwdParams& p, int64_t blocks, cudaStream_t stream) {
  // without the MLP term the activation is never evaluated
  const int act = p.mlp ? p.activation : static_cast<int>(Activation::Relu);
  ITNET_DISPATCH_ACTIVATION(act, A, launch<T, A>(p, blocks, stream));
}

}  // namespace
}  // namespace cuda

void cuda_dense_fwd(const FwdParams& p, bool is_double, cudaStream_t stream) {
  const int64_t rows = p.B * p.H * p.N;
  if (rows == 0) return;
  TORCH_CHECK((p.Dv == 0 || p.out != nullptr) && (!p.softmax || p.lse != nullptr),
              "dense_fwd (CUDA): output buffers missing");
  const int64_t blocks = (rows + cuda::kFwdWarps - 1) / cuda::kFwdWarps;
  TORCH_CHECK(blocks <= INT_MAX, "dense_fwd (CUDA): B * H * N = ", rows,
              " query rows is more than one launch supports (", int64_t(INT_MAX) * cuda::kFwdWarps,
              ")");
  if (is_double) {
    cuda::launch_act<double>(p, blocks, stream);
  } else {
    cuda::launch_act<float>(p, blocks, stream);
  }
}

}  // namespace dense
}  // namespace itnet
