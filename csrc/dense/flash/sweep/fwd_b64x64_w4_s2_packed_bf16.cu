// Flash sweep (sweep.h): forward, bfloat16, 64 x 64 tiles, 4 warps, 2 load stages, packed MLP math.
#include "dense/flash/fwd.cuh"

ITNET_FLASH_SWEEP_FWD(__nv_bfloat16, BFloat16, 64, 64, 4, 2, true, "b64x64_w4_s2_packed")
