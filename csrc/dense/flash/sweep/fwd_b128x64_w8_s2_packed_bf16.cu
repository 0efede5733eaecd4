// Flash sweep (sweep.h): forward, bfloat16, 128 x 64 tiles, 8 warps, 2 load stages, packed MLP math.
#include "dense/flash/fwd.cuh"

ITNET_FLASH_SWEEP_FWD(__nv_bfloat16, BFloat16, 128, 64, 8, 2, true, "b128x64_w8_s2_packed")
