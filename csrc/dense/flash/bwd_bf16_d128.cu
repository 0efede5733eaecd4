// Backward flash kernels, bfloat16, head dims <= 128.
#include "dense/flash/bwd.cuh"

ITNET_FLASH_INSTANCE(launch_bwd, __nv_bfloat16, 128)
