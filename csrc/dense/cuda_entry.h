// The ATen-level CUDA paths that dense_cuda.cpp dispatches between (the
// arguments bundled in DenseArgs, dense/args.h):
//  - exact kernels (cuda_fwd.cu / cuda_bwd.cu) for float32 / float64, and for
//    float16 / bfloat16 beyond the flash limits, on float32 copies;
//  - flash kernels (flash/) for float16 / bfloat16 on sm_80+.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

#include "dense/prepare.h"

namespace itnet {
namespace dense {

// flash/entry_cuda.cpp. Whether the flash kernels take this call (dtype,
// device capability, head dims, R, offset table, shared memory).
bool flash_fwd_supported(const DenseArgs& a);
bool flash_bwd_supported(const DenseArgs& a);
std::tuple<at::Tensor, at::Tensor> flash_dense_fwd(const DenseArgs& a);
GradTuple flash_dense_bwd(const GradArgs& g, const DenseArgs& a);

}  // namespace dense
}  // namespace itnet
