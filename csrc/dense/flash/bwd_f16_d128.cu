// Backward flash kernels, float16, head dims <= 128.
#include "dense/flash/bwd.cuh"

ITNET_FLASH_INSTANCE(launch_bwd, __half, 128)
