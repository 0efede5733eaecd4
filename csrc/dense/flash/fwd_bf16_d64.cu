// Forward flash kernels, bfloat16, head dims <= 64.
#include "dense/flash/fwd.cuh"

ITNET_FLASH_INSTANCE(launch_fwd, __nv_bfloat16, 64)
