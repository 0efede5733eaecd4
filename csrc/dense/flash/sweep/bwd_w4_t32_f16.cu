// Flash sweep (sweep.h): backward, float16, 4 warps (64-row blocks), tiles of 32 rows.
#include "dense/flash/bwd.cuh"

ITNET_FLASH_SWEEP_BWD(__half, Half, 4, 32, "w4_t32")
