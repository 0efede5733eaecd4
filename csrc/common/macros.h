// Portability macros shared by the C++ (CPU) and CUDA translation units.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define ITNET_HD __host__ __device__ __forceinline__
#else
#define ITNET_HD inline
#endif

namespace itnet {
// Largest number of position dimensions a window / offset table may have.
// Grids of 1, 2 and 3 dims are the common cases; 8 leaves room without
// making the small fixed-size arrays in the params structs costly.
constexpr int kMaxPosDim = 8;
}  // namespace itnet
