// Build / machine facts exposed as ops (torch.ops.itnet.cpu_capability(),
// torch.ops.itnet.cuda_kernels_compiled()).
#pragma once

#include <string>

namespace itnet {
namespace dense {
// Which vectorized CPU kernel table calls use on this machine.
std::string cpu_capability_in_use();
}  // namespace dense
}  // namespace itnet
