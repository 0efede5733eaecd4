// Backward flash kernels, bfloat16, head dims <= 64.
#include "dense/flash/bwd.cuh"

ITNET_FLASH_INSTANCE(launch_bwd, __nv_bfloat16, 64)
