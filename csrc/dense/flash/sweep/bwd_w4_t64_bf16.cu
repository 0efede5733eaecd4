// Flash sweep (sweep.h): backward, bfloat16, 4 warps (64-row blocks), tiles of 64 rows.
#include "dense/flash/bwd.cuh"

ITNET_FLASH_SWEEP_BWD(__nv_bfloat16, BFloat16, 4, 64, "w4_t64")
