// Emulated build (csrc/emulate/): the part of the CUDA runtime API the host
// code uses, answered by the emulator (an sm_90 device with an H100's shared
// memory and SM count). Found before the toolkit's header on the include path.
#pragma once

#include <cstddef>

#include "emulate/runtime.h"

typedef struct CUstream_st* cudaStream_t;

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
};
typedef enum cudaError_t cudaError;

enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};

struct cudaDeviceProp {
  char name[256];
  int major, minor;
  size_t sharedMemPerBlock, sharedMemPerBlockOptin;
  int multiProcessorCount, maxThreadsPerBlock, warpSize;
};

inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
  }
  return "unknown error";
}

// Launch errors are exceptions in the emulator: nothing is left pending.
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaPeekAtLastError() { return cudaSuccess; }

template <class F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return ::itnet::emu::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), value)
             ? cudaSuccess
             : cudaErrorInvalidValue;
}

namespace itnet {
namespace emu {
inline const cudaDeviceProp& device_properties() {
  static const cudaDeviceProp p = [] {
    cudaDeviceProp d{};
    const char n[] = "itnet emulated sm_90";
    for (size_t i = 0; i < sizeof(n); ++i) d.name[i] = n[i];
    d.major = kCcMajor;
    d.minor = kCcMinor;
    d.sharedMemPerBlock = kSmemPerBlock;
    d.sharedMemPerBlockOptin = kSmemPerBlockOptin;
    d.multiProcessorCount = kSmCount;
    d.maxThreadsPerBlock = kMaxThreadsPerBlock;
    d.warpSize = 32;
    return d;
  }();
  return p;
}
}  // namespace emu
}  // namespace itnet
