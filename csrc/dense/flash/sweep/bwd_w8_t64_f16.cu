// Flash sweep (sweep.h): backward, float16, 8 warps (128-row blocks), tiles of 64 rows.
#include "dense/flash/bwd.cuh"

ITNET_FLASH_SWEEP_BWD(__half, Half, 8, 64, "w8_t64")
