// Which per-capability CPU kernel table a call uses (the kernel files of
// every strategy are compiled once per capability, DEFAULT / AVX2 / AVX512,
// each into its own namespace; see MULTI_ARCH_SOURCES in setup.py).
// torch.ops.itnet.cpu_capability() reports the choice.
#pragma once

#include <string>

namespace itnet {

// The capability the CPU kernels use on this machine: ATen's detection
// (which honours ATEN_CPU_CAPABILITY), capped by ITNET_CPU_CAPABILITY
// (DEFAULT, AVX2, AVX512) so the narrower code paths can be tested on a wide
// machine. Read on every call: the variable takes effect when set at run time.
std::string cpu_capability_in_use();

// A strategy's kernel table for the capability in use, from its per-capability
// kernel_table() functions (null where not built).
template <class Table>
Table pick_cpu_table(Table (*def)(), Table (*avx2)(), Table (*avx512)()) {
  const std::string cap = cpu_capability_in_use();
  if (cap == "AVX512" && avx512 != nullptr) return avx512();
  if (cap == "AVX2" && avx2 != nullptr) return avx2();
  return def();
}

}  // namespace itnet

// The table of the strategy whose DEFAULT / AVX2 / AVX512 namespaces (declared
// by its cpu_kernel.h, the last two on x86 only) are visible at the call site.
#if defined(__x86_64__) || defined(_M_X64)
#define ITNET_CPU_KERNEL_TABLE()                                               \
  ::itnet::pick_cpu_table(&DEFAULT::kernel_table, &AVX2::kernel_table, \
                          &AVX512::kernel_table)
#else
#define ITNET_CPU_KERNEL_TABLE()                                                        \
  ::itnet::pick_cpu_table<decltype(DEFAULT::kernel_table())>(&DEFAULT::kernel_table, \
                                                             nullptr, nullptr)
#endif
