// Build / machine facts exposed as ops (torch.ops.itnet.cpu_capability(),
// torch.ops.itnet.cuda_kernels_compiled()).
#pragma once

#include <string>

namespace itnet {
namespace dense {
// Which vectorized CPU kernel table calls use on this machine.
std::string cpu_capability_in_use();

// A strategy's kernel table for the capability in use, from its per-capability
// kernel_table() functions (null where not built). Asked on every call, so
// that ITNET_CPU_CAPABILITY set at run time takes effect.
template <class Table>
Table pick_cpu_table(Table (*def)(), Table (*avx2)(), Table (*avx512)()) {
  const std::string cap = cpu_capability_in_use();
  if (cap == "AVX512" && avx512 != nullptr) return avx512();
  if (cap == "AVX2" && avx2 != nullptr) return avx2();
  return def();
}
}  // namespace dense
}  // namespace itnet

// The table of the strategy whose DEFAULT / AVX2 / AVX512 namespaces (declared
// by its cpu_kernel.h, the last two on x86 only) are visible at the call site.
#if defined(__x86_64__) || defined(_M_X64)
#define ITNET_CPU_KERNEL_TABLE()                                                       \
  ::itnet::dense::pick_cpu_table(&DEFAULT::kernel_table, &AVX2::kernel_table, \
                                 &AVX512::kernel_table)
#else
#define ITNET_CPU_KERNEL_TABLE()                                                       \
  ::itnet::dense::pick_cpu_table<decltype(DEFAULT::kernel_table())>(&DEFAULT::kernel_table, \
                                                                    nullptr, nullptr)
#endif
