#include "common/capability.h"

#include <ATen/Version.h>

#include <cstdlib>

namespace itnet {

std::string cpu_capability_in_use() {
#if defined(__x86_64__) || defined(_M_X64)
  std::string cap = at::get_cpu_capability();
  if (cap != "AVX512" && cap != "AVX2") cap = "DEFAULT";
  if (const char* env = std::getenv("ITNET_CPU_CAPABILITY")) {
    const std::string want(env);
    if (want == "DEFAULT" || (want == "AVX2" && cap == "AVX512")) cap = want;
  }
  return cap;
#else
  return "DEFAULT";
#endif
}

}  // namespace itnet
