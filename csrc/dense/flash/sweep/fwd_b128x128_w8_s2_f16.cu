// Flash sweep (sweep.h): forward, float16, 128 x 128 tiles, 8 warps, 2 load stages.
#include "dense/flash/fwd.cuh"

ITNET_FLASH_SWEEP_FWD(__half, Half, 128, 128, 8, 2, false, "b128x128_w8_s2")
