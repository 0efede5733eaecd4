// CUDA forward of the sparse (pair-list) integral transform (design in
// cuda_kernel.h): one warp per query row (b, i), the row's pairs packed in
// chunks of up to 32 (one pair per lane), the logits of HC heads at a time in
// registers, then per head the online softmax across chunks (or the `none`
// weights) and P.V with the lanes over Dv, accumulated in the row's output.
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <climits>

#include "common/dispatch.h"
#include "sparse/cuda_common.cuh"
#include "sparse/cuda_kernel.h"
#include "common/cuda_launch.h"

namespace itnet {
namespace sparse {
namespace cuda {
namespace {

template <class T, Activation A>
__global__ void __launch_bounds__(kMaxWarps* kWarp, kMinBlocks)
    sparse_fwd_kernel(const SparseParams sp, const WarpLayout L) {
  ITNET_DYNAMIC_SHARED(unsigned char, smem);
  constexpr int HC = HeadGroup<T>::value;
  const KernelParams& p = sp.f;
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t nwarps = static_cast<int64_t>(blockDim.x) / kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * nwarps + warp;  // (b, i)
  if (row >= p.B * p.N) return;  // whole warps only; no block barrier below
  const int64_t N = p.N, M = p.M, H = p.H, Dv = p.Dv;
  const int64_t b = row / N, i = row % N;
  const WarpSmem<T> s = WarpSmem<T>::at(smem + warp * L.bytes, L, H);
  const bool softmax = p.softmax;
  // the hidden values are kept for later head groups only when there are some
  T* hid = (p.mlp && H > HC) ? s.hid + lane : nullptr;

  if (softmax) {
    for (int64_t h = lane; h < H; h += kWarp) {
      s.m[h] = neg_inf<T>();
      s.l[h] = T(0);
    }
  }
  __syncwarp();

  T* out_b = static_cast<T*>(p.out) + (b * H * N + i) * Dv;  // head h at + h N Dv
  const T* v_b = cptr<T>(p.v) + b * H * M * Dv;             // head h at + h M Dv

  auto process = [&](int n) {
    const bool active = lane < n;
    const T lw = active ? s.lw[lane] : T(0);
    const PairRows<T> rw =
        active ? pair_rows<T>(p, b, i, s.j[lane], s.o[lane]) : PairRows<T>{};
    for (int64_t h0 = 0; h0 < H; h0 += HC) {
      T lg[HC];
      const int nh = lane_group_logits<T, A, HC>(p, rw, active, h0, hid, lg);
#pragma unroll 1
      for (int hh = 0; hh < nh; ++hh) {
        const int64_t h = h0 + hh;
        const T l = pick(lg, hh);
        T a = T(0), alpha = T(1);
        if (softmax) {
          const T z = active ? l + lw : neg_inf<T>();
          const T cm = warp_max(z);
          const T m_old = s.m[h];
          const T m_new = cm > m_old ? cm : m_old;
          alpha = softmax_rescale(m_old, m_new);
          if (active) a = Ops<T>::exp(z - softmax_shift(m_new));
          const T l_new = s.l[h] * alpha + warp_sum(a);
          __syncwarp();  // every lane has read s.m[h], s.l[h]
          if (lane == 0) {
            s.m[h] = m_new;
            s.l[h] = l_new;
          }
        } else if (active) {
          a = l * pair_weight(lw);
        }
        __syncwarp();  // the previous head's weights are read
        s.a[lane] = a;
        __syncwarp();
        T* o_h = out_b + h * N * Dv;
        const T* v_h = v_b + h * M * Dv;
        for (int64_t d = lane; d < Dv; d += kWarp) {
          T acc = T(0);
          for (int c = 0; c < n; ++c) acc += s.a[c] * v_h[s.j[c] * Dv + d];
          o_h[d] = o_h[d] * alpha + acc;
        }
      }
    }
  };

  walk_row(sp, b, i, s, lane, process);

  if (softmax) {
    __syncwarp();
    for (int64_t h = 0; h < H; ++h) {
      const T m = s.m[h], l = s.l[h];
      const T inv = softmax_inv_sum(l);
      T* o_h = out_b + h * N * Dv;
      for (int64_t d = lane; d < Dv; d += kWarp) o_h[d] *= inv;
      if (lane == 0) static_cast<T*>(p.lse)[(b * H + h) * N + i] = softmax_lse(m, l);
    }
  }
}

template <class T, Activation A>
void launch(const SparseParams& p, const CudaDevice& dev, cudaStream_t stream) {
  const KernelParams& f = p.f;
  constexpr int HC = HeadGroup<T>::value;
  const WarpLayout L = WarpLayout::make(sizeof(T), f.H, f.R, /*head_buf=*/false,
                                        /*ml=*/f.softmax, /*hid=*/f.mlp && f.H > HC);
  const int warps = warps_that_fit(L.bytes, dev.smem_optin);
  TORCH_CHECK(warps > 0, "sparse_fwd (CUDA): H = ", f.H, " heads and R = ", f.R,
              " hidden units need ", L.bytes, " bytes of shared memory per query row (",
              sizeof(T) == 8 ? "float64" : "float32", "), more than this GPU's ", dev.smem_optin,
              " per block");
  const int64_t rows = f.B * f.N;
  const int64_t blocks = (rows + warps - 1) / warps;
  TORCH_CHECK(blocks <= INT_MAX, "sparse_fwd (CUDA): B * N = ", rows,
              " query rows is more than one launch supports");
  const int64_t smem = warps * L.bytes;
  auto* kernel = &sparse_fwd_kernel<T, A>;
  set_smem(kernel, smem);
  ITNET_LAUNCH(static_cast<unsigned>(blocks), warps * kWarp, static_cast<size_t>(smem), stream,
               kernel)(p, L);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <class T>
void launch_act(const SparseParams& p, const CudaDevice& dev, cudaStream_t stream) {
  // without the MLP term the activation is never evaluated
  const int act = p.f.mlp ? p.f.activation : static_cast<int>(Activation::Relu);
  ITNET_DISPATCH_ACTIVATION(act, A, launch<T, A>(p, dev, stream));
}

}  // namespace
}  // namespace cuda

void cuda_sparse_fwd(const SparseParams& p, bool is_double, const CudaDevice& dev,
                     cudaStream_t stream) {
  const KernelParams& f = p.f;
  if (f.B * f.N == 0 || f.H == 0) return;
  TORCH_CHECK((f.Dv == 0 || f.out != nullptr) && (!f.softmax || f.lse != nullptr),
              "sparse_fwd (CUDA): output buffers missing");
  if (is_double) {
    cuda::launch_act<double>(p, dev, stream);
  } else {
    cuda::launch_act<float>(p, dev, stream);
  }
}

}  // namespace sparse
}  // namespace itnet
