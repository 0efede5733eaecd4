// Flash sweep (sweep.h): backward, bfloat16, 8 warps (128-row blocks), tiles of 32 rows.
#include "dense/flash/bwd.cuh"

ITNET_FLASH_SWEEP_BWD(__nv_bfloat16, BFloat16, 8, 32, "w8_t32")
