// Flash sweep (sweep.h): forward, float16, 128 x 64 tiles, 4 warps, 1 load stage.
#include "dense/flash/fwd.cuh"

ITNET_FLASH_SWEEP_FWD(__half, Half, 128, 64, 4, 1, false, "b128x64_w4_s1")
