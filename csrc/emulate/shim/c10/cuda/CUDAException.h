// Emulated build: c10's CUDA error checks. An emulated launch reports its
// errors by throwing, so the launch check has nothing left to look at.
#pragma once

#include <c10/util/Exception.h>

#include "cuda_runtime_api.h"

#define C10_CUDA_CHECK(EXPR)                                                   \
  do {                                                                         \
    const cudaError_t itnet_emu_err = (EXPR);                                  \
    TORCH_CHECK(itnet_emu_err == cudaSuccess,                                  \
                "CUDA error (emulated): ", cudaGetErrorString(itnet_emu_err)); \
  } while (0)

#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())
