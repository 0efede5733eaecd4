// Kernel launches and shared memory of every CUDA kernel, as macros that are
// plain CUDA under nvcc (the same PTX as writing them out) and go through the
// device emulator's runtime in the emulated build (ITNET_EMULATE, csrc/emulate/):
//
//   ITNET_LAUNCH(grid, block, smem, stream, kernel<T, A>)(args...);
//       kernel<<<grid, block, smem, stream>>>(args...) (the kernel last: its
//       template arguments may hold commas)
//   ITNET_DYNAMIC_SHARED(unsigned char, smem);
//       extern __shared__ __align__(16) unsigned char smem[];
//   ITNET_SHARED(float, red, [kThreads]);
//       __shared__ float red[kThreads];  (any declarator suffix, or none)
//
// And what the host entry points (*_cuda.cpp) register under: the CUDA key of
// the itnet library, or, emulated, the CPU key of the itnet_emu library (the
// same schemas, csrc/ops.cpp), whose "device" tensors are CPU tensors.
#pragma once

#if defined(ITNET_EMULATE)

#define ITNET_LAUNCH(grid, block, smem, stream, ...)                                          \
  ::itnet::emu::make_launcher(__VA_ARGS__, #__VA_ARGS__ " (" __FILE__ ")", grid, block, smem, \
                              stream)

#define ITNET_DYNAMIC_SHARED(type, name) \
  type* const name = static_cast<type*>(::itnet::emu::shared_dynamic())

// One allocation per declaration site (the address of a static local is
// unique to the site and the template instance), the same offset in every block.
#define ITNET_SHARED(type, name, ...)                                                 \
  static const char name##_emu_site = 0;                                              \
  using name##_emu_type = type __VA_ARGS__;                                           \
  name##_emu_type& name = *static_cast<name##_emu_type*>(::itnet::emu::shared_static( \
      &name##_emu_site, sizeof(name##_emu_type), alignof(name##_emu_type), #name))

#define ITNET_CUDA_NS itnet_emu
#define ITNET_CUDA_KEY CPU
#define ITNET_ON_CUDA(t) ((t).is_cpu())
#define ITNET_CUDA_WHERE "a CPU tensor (emulated CUDA)"

#else

#define ITNET_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>

#define ITNET_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]

#define ITNET_SHARED(type, name, ...) __shared__ type name __VA_ARGS__

#define ITNET_CUDA_NS itnet
#define ITNET_CUDA_KEY CUDA
#define ITNET_ON_CUDA(t) ((t).is_cuda())
#define ITNET_CUDA_WHERE "a CUDA tensor"

#endif

// TORCH_LIBRARY_IMPL pastes its namespace argument: expand ITNET_CUDA_NS first.
#define ITNET_CUDA_LIBRARY_IMPL_(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)
#define ITNET_CUDA_LIBRARY_IMPL(m) ITNET_CUDA_LIBRARY_IMPL_(ITNET_CUDA_NS, ITNET_CUDA_KEY, m)
