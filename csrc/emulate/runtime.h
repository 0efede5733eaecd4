// The device emulator's host runtime (docs/design.md section 7): runs a CUDA
// grid on the CPU, one block at a time, each thread of a block a cooperative
// fiber that switches only where a real thread could be overtaken by another
// (block and warp barriers, warp collectives). What it checks:
//  - launch limits (threads per block, grid size, shared memory per block,
//    dynamic shared memory above 48 KiB only after cudaFuncSetAttribute);
//  - deadlocks: a __syncthreads that not every thread of the block reaches,
//    a warp collective that a thread of its mask never reaches (or reaches
//    at another collective);
//  - shared memory: poisoned (0xFF bytes: NaN in float / double, -1 in
//    integers) at every block start; with race checking on, every load and
//    store of an emulated translation unit is seen (the compiler's
//    -fsanitize=thread instrumentation calls this runtime's __tsan_* hooks),
//    so an access outside every shared allocation (a redzone or past the end)
//    and a race (a location written by one thread and read or written by
//    another within one barrier interval) are reported;
//  - thread order: forward, reverse or seeded-shuffled per block, so a
//    missing barrier shows up as a different result.
// A problem stops the launch with a C++ exception (a RuntimeError in Python)
// that names the kernel, the block, the threads and the place.
//
// Only this file's API is seen by the emulated kernels (through device.h);
// the implementation (runtime.cpp) is compiled without instrumentation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace itnet {
namespace emu {

struct Dim {
  unsigned x = 1, y = 1, z = 1;
};

// What the running thread (fiber) sees as its CUDA built-in variables.
struct ThreadIds {
  Dim thread_idx, block_idx, block_dim, grid_dim;
};

// The running fiber's ids; fails (a clear error) outside an emulated kernel.
const ThreadIds& ids();

// One kernel launch: runs body(closure) for every thread of every block and
// returns when the grid is done (launches are synchronous). Throws on a
// launch error or on a problem found while running.
void launch(const void* kernel, const char* name, Dim grid, Dim block, size_t dynamic_smem,
            void (*body)(void*), void* closure);

// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes).
// Returns false when bytes is above the device's opt-in limit.
bool set_max_dynamic_smem(const void* kernel, int bytes);

// The emulated device: sm_90 with an H100's shared memory and SM count.
constexpr int kSmemPerBlock = 48 * 1024;        // without opting in
constexpr int kSmemPerBlockOptin = 227 * 1024;  // sharedMemPerBlockOptin
constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kSmCount = 132;
constexpr int kCcMajor = 9, kCcMinor = 0;

// ---- called by the device builtins (device.h) ----------------------------
void sync_threads();
void sync_warp(unsigned mask);
// A warp collective of kind `op` (a name for messages, compared between the
// lanes): every non-exited lane of `mask` deposits `bytes` bytes at `mine`;
// when all have arrived, lane l's out[l'] receives lane l''s bytes for every
// participating lane l', and `arrived` the mask of the lanes that took part
// (exited lanes of the mask do not). out must hold 32 * bytes.
void warp_exchange(const char* op, unsigned mask, const void* mine, size_t bytes, void* out,
                   unsigned* arrived);
// The lanes of the running thread's warp that have not exited.
unsigned live_lanes();

// Shared memory of the running block. A static __shared__ declaration (site:
// an address unique to it) gets its own allocation, the same offset in every
// block of the launch; the dynamic one is the launch's dynamic size.
void* shared_static(const void* site, size_t bytes, size_t align, const char* name);
void* shared_dynamic();
// Whether p points into the running block's shared memory.
bool in_shared(const void* p);

// ---- cp.async (the flash kernels) -----------------------------------------
// Queues a copy of `bytes` bytes (or zeros when !valid) to shared dst; the
// copies of the running thread are done at cp_async_wait_all, not before.
void cp_async(void* dst, const void* src, int bytes, bool valid);
void cp_async_commit();
void cp_async_wait_all();

// A problem found by device code of an emulated kernel (stops the launch).
[[noreturn]] void device_fail(const std::string& what);

// ---- settings (itnet_ext.emulate) ------------------------------------------
enum class Order { Forward = 0, Reverse = 1, Shuffle = 2 };
struct Settings {
  Order order = Order::Forward;
  uint64_t seed = 0;
  bool race_check = true;  // effective only in an instrumented build
  bool poison_shared = true;
};
Settings settings();
void configure(const Settings& s);
// Whether the emulated kernels were compiled with access instrumentation.
bool instrumented();
// Counters since the last reset (launches, blocks, fibers' switches, checked
// shared accesses): what the tests use to see that the checks really ran.
struct Stats {
  int64_t launches = 0, blocks = 0, switches = 0, shared_accesses = 0;
};
Stats stats();
void reset_stats();

}  // namespace emu
}  // namespace itnet
