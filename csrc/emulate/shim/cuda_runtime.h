// Emulated build: what nvcc's implicit cuda_runtime.h brings, the device
// language (emulate/device.h) and the runtime API.
#pragma once

#include "cuda_runtime_api.h"
#include "emulate/device.h"
