// Flash sweep (sweep.h): forward, bfloat16, 128 x 64 tiles, 4 warps, 1 load stage.
#include "dense/flash/fwd.cuh"

ITNET_FLASH_SWEEP_FWD(__nv_bfloat16, BFloat16, 128, 64, 4, 1, false, "b128x64_w4_s1")
