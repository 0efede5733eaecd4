// Emulated build: the current stream (launches are synchronous: one stream)
// and the properties of the emulated device.
#pragma once

#include <ATen/ATen.h>

#include "cuda_runtime_api.h"

namespace at {
namespace cuda {
struct CUDAStream {
  cudaStream_t s = nullptr;
  operator cudaStream_t() const { return s; }
  cudaStream_t stream() const { return s; }
};
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }
inline const cudaDeviceProp* getCurrentDeviceProperties() {
  return &::itnet::emu::device_properties();
}
inline const cudaDeviceProp* getDeviceProperties(c10::DeviceIndex) {
  return &::itnet::emu::device_properties();
}
}  // namespace cuda
}  // namespace at
