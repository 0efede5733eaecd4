// Forward flash kernels, float16, head dims <= 128.
#include "dense/flash/fwd.cuh"

ITNET_FLASH_INSTANCE(launch_fwd, __half, 128)
