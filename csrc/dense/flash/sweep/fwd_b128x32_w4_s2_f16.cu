// Flash sweep (sweep.h): forward, float16, 128 x 32 tiles, 4 warps, 2 load stages.
#include "dense/flash/fwd.cuh"

ITNET_FLASH_SWEEP_FWD(__half, Half, 128, 32, 4, 2, false, "b128x32_w4_s2")
