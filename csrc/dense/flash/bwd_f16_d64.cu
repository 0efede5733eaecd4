// Backward flash kernels, float16, head dims <= 64.
#include "dense/flash/bwd.cuh"

ITNET_FLASH_INSTANCE(launch_bwd, __half, 64)
