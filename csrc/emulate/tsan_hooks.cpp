// The entry points of GCC's -fsanitize=thread instrumentation, implemented by
// the emulator instead of libtsan: the emulated kernels' translation units are
// compiled with that instrumentation (and linked without libtsan), so each of
// their loads and stores calls one of these, and accesses to the running
// block's shared memory reach the race and bounds checks of runtime.cpp.
// Atomics are carried out here (they are never races with each other) and
// not recorded. Compiled without instrumentation.
#include <cstddef>
#include <cstdint>

namespace itnet {
namespace emu {
void report_access(const void* p, size_t size, bool write);
}  // namespace emu
}  // namespace itnet

using itnet::emu::report_access;

extern "C" {

#define ITNET_EMU_EXPORT __attribute__((visibility("default")))

void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
void __tsan_ignore_thread_begin() {}
void __tsan_ignore_thread_end() {}

#define ITNET_EMU_PLAIN(n)                                                        \
  void __tsan_read##n(void* p) { report_access(p, n, false); }                    \
  void __tsan_write##n(void* p) { report_access(p, n, true); }                    \
  void __tsan_unaligned_read##n(void* p) { report_access(p, n, false); }          \
  void __tsan_unaligned_write##n(void* p) { report_access(p, n, true); }          \
  void __tsan_volatile_read##n(void* p) { report_access(p, n, false); }           \
  void __tsan_volatile_write##n(void* p) { report_access(p, n, true); }           \
  void __tsan_unaligned_volatile_read##n(void* p) { report_access(p, n, false); } \
  void __tsan_unaligned_volatile_write##n(void* p) { report_access(p, n, true); } \
  void __tsan_read##n##_pc(void* p, void*) { report_access(p, n, false); }        \
  void __tsan_write##n##_pc(void* p, void*) { report_access(p, n, true); }

ITNET_EMU_PLAIN(1)
ITNET_EMU_PLAIN(2)
ITNET_EMU_PLAIN(4)
ITNET_EMU_PLAIN(8)
ITNET_EMU_PLAIN(16)
#undef ITNET_EMU_PLAIN

void __tsan_read_range(void* p, unsigned long n) { report_access(p, n, false); }
void __tsan_write_range(void* p, unsigned long n) { report_access(p, n, true); }

// Atomics: the memory order argument uses the __ATOMIC_* codes.
#define ITNET_EMU_ATOMIC(bits, T)                                                           \
  T __tsan_atomic##bits##_load(const volatile T* a, int) {                                  \
    return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                            \
  }                                                                                         \
  void __tsan_atomic##bits##_store(volatile T* a, T v, int) {                               \
    __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                               \
  }                                                                                         \
  T __tsan_atomic##bits##_exchange(volatile T* a, T v, int) {                               \
    return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                     \
  }                                                                                         \
  T __tsan_atomic##bits##_fetch_add(volatile T* a, T v, int) {                              \
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                      \
  }                                                                                         \
  T __tsan_atomic##bits##_fetch_sub(volatile T* a, T v, int) {                              \
    return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                      \
  }                                                                                         \
  T __tsan_atomic##bits##_fetch_and(volatile T* a, T v, int) {                              \
    return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                      \
  }                                                                                         \
  T __tsan_atomic##bits##_fetch_or(volatile T* a, T v, int) {                               \
    return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                       \
  }                                                                                         \
  T __tsan_atomic##bits##_fetch_xor(volatile T* a, T v, int) {                              \
    return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                      \
  }                                                                                         \
  T __tsan_atomic##bits##_fetch_nand(volatile T* a, T v, int) {                             \
    return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST);                                     \
  }                                                                                         \
  int __tsan_atomic##bits##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {   \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); \
  }                                                                                         \
  int __tsan_atomic##bits##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {     \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); \
  }                                                                                         \
  T __tsan_atomic##bits##_compare_exchange_val(volatile T* a, T c, T v, int, int) {         \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);       \
    return c;                                                                               \
  }

ITNET_EMU_ATOMIC(8, uint8_t)
ITNET_EMU_ATOMIC(16, uint16_t)
ITNET_EMU_ATOMIC(32, uint32_t)
ITNET_EMU_ATOMIC(64, uint64_t)
#undef ITNET_EMU_ATOMIC

void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

}  // extern "C"
