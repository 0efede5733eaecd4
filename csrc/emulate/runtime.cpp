// The device emulator's runtime (see runtime.h for what it does and checks).
// Compiled without the access instrumentation it serves: its own loads and
// stores (the scheduler, the shadow of shared memory) are not reported to it.
//
// Structure: one launch at a time (a process-wide mutex); per block, every
// thread is a fiber (ucontext) on its own stack. The scheduler runs each
// runnable fiber, in the chosen order, until it blocks (at a barrier or a
// warp collective) or exits; when none is runnable it releases what is
// complete (a warp collective whose every non-exited lane arrived, or the
// block barrier once every thread waits there) or reports the deadlock.
#include "emulate/runtime.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <unordered_map>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define ITNET_EMU_ASAN 1
#endif

namespace itnet {
namespace emu {
namespace {

constexpr int kWarp = 32;
constexpr uint16_t kNone = 0xFFFF;
constexpr size_t kRedzone = 256;         // bytes between shared allocations
constexpr size_t kDynamicOffset = 1024;  // the dynamic array's offset in the arena
constexpr size_t kArenaBytes = kDynamicOffset + kSmemPerBlockOptin + 64 * kRedzone + 4096;

enum class State : uint8_t { Runnable, AtBarrier, AtWarpOp, Exited };

struct Copy {
  void* dst;
  const void* src;
  int bytes;
  bool valid;
};

struct Fiber {
  ucontext_t ctx;     // the portable switch (non-x86-64)
  void* sp = nullptr;  // the x86-64 switch: the saved stack pointer
  char* stack = nullptr;  // the mapping, guard page first
  size_t stack_bytes = 0;
  State state = State::Runnable;
  uint32_t tid = 0;  // linear thread index in the block
  ThreadIds ids;
  // at a warp operation
  const char* op = nullptr;
  unsigned mask = 0;
  const void* mine = nullptr;
  size_t bytes = 0;
  void* out = nullptr;
  unsigned* arrived = nullptr;
  std::vector<Copy> pending;  // cp.async copies not yet waited for
#if defined(ITNET_EMU_ASAN)
  void* fake_stack = nullptr;
#endif
};

// Shadow of one byte of shared memory: the last write and up to two reads
// (by different threads) of the current block, with when they happened:
// the block's barrier interval (epoch) and the warp's __syncwarp count (gen).
struct Shadow {
  uint32_t block = 0;
  uint32_t w_epoch = 0, w_gen = 0, r1_epoch = 0, r1_gen = 0, r2_epoch = 0, r2_gen = 0;
  uint16_t w_tid = kNone, r1_tid = kNone, r2_tid = kNone;
};

struct Region {
  std::string name;
  size_t offset = 0, bytes = 0;
};

struct Launch {
  std::string name;
  Dim grid, block, block_idx;
  size_t dynamic = 0;
  void (*body)(void*) = nullptr;
  void* closure = nullptr;
  int threads = 0;
  std::vector<Fiber>* fibers = nullptr;
  std::vector<int> order;
  // shared memory
  unsigned char* arena = nullptr;
  std::vector<int16_t>* region_of = nullptr;  // per arena byte: region index or -1
  std::vector<Region> regions;                // 0: the dynamic array
  std::unordered_map<const void*, int> sites;
  size_t static_bytes = 0, end = 0;  // static total; arena bytes in use
  // race checking
  bool checking = false;
  bool poison = true;  // the launch's settings().poison_shared
  uint32_t serial = 0;  // of the running block (shadow records of older blocks are stale)
  uint32_t epoch = 0;
  std::vector<std::vector<unsigned>> warp_syncs;  // per warp: the mask of each completed __syncwarp
  // a problem found in device code
  bool failed = false;
  std::string error;
};

// ---- process-wide state (one launch at a time) -----------------------------------------
std::mutex g_launch_mutex;
std::mutex g_settings_mutex;
Settings g_settings = [] {
  Settings s;
  if (const char* o = std::getenv("ITNET_EMU_ORDER")) {
    const std::string v(o);
    if (v == "reverse") s.order = Order::Reverse;
    if (v.rfind("shuffle", 0) == 0) {
      s.order = Order::Shuffle;
      const size_t colon = v.find(':');
      if (colon != std::string::npos) s.seed = std::strtoull(v.c_str() + colon + 1, nullptr, 10);
    }
  }
  if (const char* r = std::getenv("ITNET_EMU_RACECHECK")) s.race_check = std::strcmp(r, "0") != 0;
  return s;
}();
std::unordered_map<const void*, int> g_max_dynamic;  // cudaFuncSetAttribute
Stats g_stats;
std::vector<Fiber> g_fibers;
unsigned char* g_arena = nullptr;
std::vector<int16_t> g_region_of;
std::vector<Shadow> g_shadow;
uint32_t g_serial = 0;
#if defined(__x86_64__)
void* g_scheduler_sp = nullptr;  // the scheduler's context (see itnet_emu_switch)
#else
ucontext_t g_scheduler;
#endif
#if defined(ITNET_EMU_ASAN)
const void* g_main_stack_bottom = nullptr;
size_t g_main_stack_size = 0;
#endif

// The launch running on this host thread and its running fiber (initial-exec
// TLS: the access hooks read it on every load and store).
__thread Launch* t_launch __attribute__((tls_model("initial-exec"))) = nullptr;
__thread Fiber* t_fiber __attribute__((tls_model("initial-exec"))) = nullptr;

size_t stack_bytes() {
  static const size_t bytes = [] {
    size_t kb = 256;
#if defined(ITNET_EMU_ASAN)
    kb = 1024;
#endif
    if (const char* e = std::getenv("ITNET_EMU_STACK_KB")) kb = std::strtoull(e, nullptr, 10);
    return std::max<size_t>(kb, 64) * 1024;
  }();
  return bytes;
}

std::string dim_str(const Dim& d) {
  std::ostringstream s;
  s << "(" << d.x << ", " << d.y << ", " << d.z << ")";
  return s.str();
}

std::string hex(unsigned m) {
  std::ostringstream s;
  s << "0x" << std::hex << m;
  return s.str();
}

std::string where(const Launch& L) {
  if (L.threads == 0)  // not started: a launch error
    return "emulated CUDA kernel " + L.name + ", grid " + dim_str(L.grid) + ", block " +
           dim_str(L.block);
  return "emulated CUDA kernel " + L.name + ", block " + dim_str(L.block_idx) + " of grid " +
         dim_str(L.grid) + ", " + std::to_string(L.threads) + " threads";
}

std::string thread_str(uint32_t tid) {
  return "thread " + std::to_string(tid) + " (warp " + std::to_string(tid / kWarp) + ", lane " +
         std::to_string(tid % kWarp) + ")";
}

// Ranges of thread indices, "0-31, 40".
std::string ranges(const std::vector<uint32_t>& t) {
  std::ostringstream s;
  for (size_t i = 0; i < t.size();) {
    size_t j = i;
    while (j + 1 < t.size() && t[j + 1] == t[j] + 1) ++j;
    if (i) s << ", ";
    s << t[i];
    if (j > i) s << "-" << t[j];
    i = j + 1;
  }
  return s.str();
}

// ---- fibers ---------------------------------------------------------------------------------
// Switching: on x86-64 a minimal switch of the callee-saved registers and the
// stack pointer (swapcontext also saves the signal mask with a system call per
// switch, which made it most of an emulated kernel's time); ucontext elsewhere.
#if defined(__x86_64__)
#define ITNET_EMU_FAST_SWITCH 1
// itnet_emu_switch(save, load): pushes the callee-saved registers, stores the
// stack pointer at *save, loads `load` and pops the registers saved there.
extern "C" void itnet_emu_switch(void** save, void* load);
asm(R"(
  .text
  .p2align 4
  .type itnet_emu_switch,@function
itnet_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size itnet_emu_switch, .-itnet_emu_switch
)");
#endif

void switch_to_scheduler(Fiber& f) {
#if defined(ITNET_EMU_ASAN)
  __sanitizer_start_switch_fiber(f.state == State::Exited ? nullptr : &f.fake_stack,
                                 g_main_stack_bottom, g_main_stack_size);
#endif
#if defined(ITNET_EMU_FAST_SWITCH)
  itnet_emu_switch(&f.sp, g_scheduler_sp);
#else
  swapcontext(&f.ctx, &g_scheduler);
#endif
#if defined(ITNET_EMU_ASAN)
  __sanitizer_finish_switch_fiber(f.fake_stack, nullptr, nullptr);
#endif
}

void fiber_run(Fiber* f) {
#if defined(ITNET_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &g_main_stack_bottom, &g_main_stack_size);
#endif
  Launch* L = t_launch;
  try {
    L->body(L->closure);
  } catch (const std::exception& e) {
    if (!L->failed) {
      L->failed = true;
      L->error = thread_str(f->tid) + " stopped: " + e.what();
    }
  } catch (...) {
    if (!L->failed) {
      L->failed = true;
      L->error = thread_str(f->tid) + " stopped with an unknown exception";
    }
  }
  f->state = State::Exited;
  switch_to_scheduler(*f);  // never resumed
  std::abort();
}

#if defined(ITNET_EMU_FAST_SWITCH)
// The first code of a fiber: the scheduler set t_fiber before switching here.
void fiber_start() { fiber_run(t_fiber); }
#else
void fiber_main(unsigned lo, unsigned hi) {
  fiber_run(reinterpret_cast<Fiber*>((static_cast<uintptr_t>(hi) << 32) | lo));
}
#endif

void ensure_fibers(size_t n) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  while (g_fibers.size() < n) g_fibers.emplace_back();
  for (size_t i = 0; i < n; ++i) {
    Fiber& f = g_fibers[i];
    if (f.stack) continue;
    f.stack_bytes = stack_bytes();
    void* m = mmap(nullptr, f.stack_bytes + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) throw std::runtime_error("itnet emulator: cannot map a fiber stack");
    mprotect(m, page, PROT_NONE);  // overflow faults instead of corrupting a neighbour
    f.stack = static_cast<char*>(m);
  }
}

// ITNET_EMU_POISON_STACK=1: each fiber's stack (its top 32 KiB) is filled with
// 0xFF bytes at every block start, so a kernel that reads a local variable (a
// register on the GPU) before writing it gets NaN instead of what an earlier
// thread left there.
bool poison_stacks() {
  static const bool on = [] {
    const char* e = std::getenv("ITNET_EMU_POISON_STACK");
    return e != nullptr && std::strcmp(e, "1") == 0;
  }();
  return on;
}

void start_fiber(Fiber& f, size_t page) {
  if (poison_stacks()) {
    const size_t n = std::min<size_t>(f.stack_bytes, 32 * 1024);
    std::memset(f.stack + page + f.stack_bytes - n, 0xFF, n);
  }
#if defined(ITNET_EMU_FAST_SWITCH)
  // a stack that itnet_emu_switch "returns" into fiber_start from: six zero
  // registers, fiber_start's address, and a null return address for it (16-byte
  // aligned, so that fiber_start's frame is laid out as after a call)
  auto top = reinterpret_cast<uintptr_t>(f.stack + page + f.stack_bytes) & ~uintptr_t(15);
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;
  *--sp = reinterpret_cast<void*>(&fiber_start);
  for (int i = 0; i < 6; ++i) *--sp = nullptr;
  f.sp = sp;
#else
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack + page;
  f.ctx.uc_stack.ss_size = f.stack_bytes;
  f.ctx.uc_link = nullptr;
  const uintptr_t p = reinterpret_cast<uintptr_t>(&f);
  makecontext(&f.ctx, reinterpret_cast<void (*)()>(fiber_main), 2,
              static_cast<unsigned>(p & 0xffffffffu), static_cast<unsigned>(p >> 32));
#endif
}

void resume(Fiber& f) {
  t_fiber = &f;
  ++g_stats.switches;
#if defined(ITNET_EMU_ASAN)
  void* save = nullptr;
  __sanitizer_start_switch_fiber(&save, f.stack + sysconf(_SC_PAGESIZE), f.stack_bytes);
#endif
#if defined(ITNET_EMU_FAST_SWITCH)
  itnet_emu_switch(&g_scheduler_sp, f.sp);
#else
  swapcontext(&g_scheduler, &f.ctx);
#endif
#if defined(ITNET_EMU_ASAN)
  __sanitizer_finish_switch_fiber(save, nullptr, nullptr);
#endif
  t_fiber = nullptr;
}


Fiber& running(const char* what) {
  if (t_fiber == nullptr || t_launch == nullptr)
    throw std::logic_error(std::string("itnet emulator: ") + what +
                           " used outside an emulated kernel");
  return *t_fiber;
}

[[noreturn]] void fail_here(const std::string& what) {
  Fiber& f = running("a device-side check");
  Launch& L = *t_launch;
  if (!L.failed) {
    L.failed = true;
    L.error = what;
  }
  f.state = State::Exited;
  switch_to_scheduler(f);  // never resumed
  std::abort();
}

// ---- shared memory and its shadow ------------------------------------------------------------
void mark_region(Launch& L, size_t off, size_t bytes, int16_t id) {
  std::fill(L.region_of->begin() + off, L.region_of->begin() + off + bytes, id);
#if defined(ITNET_EMU_ASAN)
  ASAN_UNPOISON_MEMORY_REGION(L.arena + off, bytes);
#endif
}

bool warp_synced(const Launch& L, uint32_t warp, uint32_t g1, uint32_t g2, uint32_t la,
                 uint32_t lb) {
  const std::vector<unsigned>& h = L.warp_syncs[warp];
  for (uint32_t g = g1 + 1; g <= g2 && g <= h.size(); ++g) {
    const unsigned m = h[g - 1];
    if (((m >> la) & 1u) && ((m >> lb) & 1u)) return true;
  }
  return false;
}

// Whether an earlier access (tid, epoch, gen) and the running thread's access
// now may happen in either order on a GPU.
bool unordered(const Launch& L, uint32_t tid, uint16_t other, uint32_t epoch, uint32_t gen) {
  if (other == kNone || other == tid || epoch != L.epoch) return false;
  const uint32_t w = tid / kWarp;
  if (other / kWarp != w) return true;
  const uint32_t now = static_cast<uint32_t>(L.warp_syncs[w].size());
  return !warp_synced(L, w, gen, now, other % kWarp, tid % kWarp);
}

std::string place(const Launch& L, size_t off) {
  const int16_t r = (*L.region_of)[off];
  std::ostringstream s;
  if (r >= 0) {
    const Region& g = L.regions[static_cast<size_t>(r)];
    s << "shared '" << g.name << "' byte " << (off - g.offset) << " of " << g.bytes;
  } else {
    // the nearest allocation, for the message
    const Region* best = nullptr;
    long long dist = 0;
    for (const Region& g : L.regions) {
      if (g.bytes == 0 && &g != &L.regions[0]) continue;
      const long long d = static_cast<long long>(off) - static_cast<long long>(g.offset);
      if (best == nullptr || std::llabs(d) < std::llabs(dist)) {
        best = &g;
        dist = d;
      }
    }
    s << "shared memory outside every allocation";
    if (best)
      s << " (byte " << dist << " of '" << best->name << "', which has " << best->bytes << ")";
  }
  return s.str();
}

void on_access(uintptr_t addr, size_t size, bool write) {
  Launch* Lp = t_launch;
  if (Lp == nullptr || !Lp->checking || t_fiber == nullptr) return;
  Launch& L = *Lp;
  const uintptr_t base = reinterpret_cast<uintptr_t>(L.arena);
  if (addr < base || addr >= base + kArenaBytes) return;
  ++g_stats.shared_accesses;
  const size_t off0 = addr - base;
  const uint32_t tid = t_fiber->tid;
  const uint32_t gen = static_cast<uint32_t>(L.warp_syncs[tid / kWarp].size());
  for (size_t off = off0; off < off0 + size && off < kArenaBytes; ++off) {
    if ((*L.region_of)[off] < 0) {
      fail_here(thread_str(tid) + (write ? " writes " : " reads ") + std::to_string(size) +
                " bytes at " + place(L, off) + ": a shared-memory index out of range");
    }
    Shadow& s = g_shadow[off];
    if (s.block != L.serial) s = Shadow{L.serial};
    uint16_t other = kNone;
    const char* what = nullptr;
    if (unordered(L, tid, s.w_tid, s.w_epoch, s.w_gen)) {
      other = s.w_tid;
      what = "wrote";
    } else if (write && unordered(L, tid, s.r1_tid, s.r1_epoch, s.r1_gen)) {
      other = s.r1_tid;
      what = "read";
    } else if (write && unordered(L, tid, s.r2_tid, s.r2_epoch, s.r2_gen)) {
      other = s.r2_tid;
      what = "read";
    }
    if (other != kNone) {
      fail_here("shared-memory race: " + thread_str(tid) + (write ? " writes " : " reads ") +
                std::to_string(size) + " bytes at " + place(L, off) + ", which " +
                thread_str(other) + " " + what +
                " in the same barrier interval (no __syncthreads or __syncwarp orders them)");
    }
    if (write) {
      s.w_tid = static_cast<uint16_t>(tid);
      s.w_epoch = L.epoch;
      s.w_gen = gen;
      s.r1_tid = s.r2_tid = kNone;
    } else if (s.r1_tid == tid || s.r1_tid == kNone) {
      s.r1_tid = static_cast<uint16_t>(tid);
      s.r1_epoch = L.epoch;
      s.r1_gen = gen;
    } else {
      s.r2_tid = static_cast<uint16_t>(tid);
      s.r2_epoch = L.epoch;
      s.r2_gen = gen;
    }
  }
}

// ---- scheduling ------------------------------------------------------------------------------
void make_order(Launch& L, const Settings& st, uint64_t block_linear) {
  L.order.resize(static_cast<size_t>(L.threads));
  std::iota(L.order.begin(), L.order.end(), 0);
  if (st.order == Order::Reverse) std::reverse(L.order.begin(), L.order.end());
  if (st.order == Order::Shuffle) {
    std::mt19937_64 rng(st.seed * 0x9E3779B97F4A7C15ull + block_linear);
    std::shuffle(L.order.begin(), L.order.end(), rng);
  }
}

[[noreturn]] void launch_error(const Launch& L, const std::string& what) {
  throw std::runtime_error("itnet emulator: " + where(L) + ": " + what);
}

// Completes the warp collectives whose every non-exited lane arrived; reports
// a lane of a waiting mask that waits elsewhere. Returns whether any completed.
bool release_warps(Launch& L) {
  std::vector<Fiber>& F = *L.fibers;
  bool released = false;
  const int warps = (L.threads + kWarp - 1) / kWarp;
  for (int w = 0; w < warps; ++w) {
    const int base = w * kWarp;
    const int lanes = std::min(kWarp, L.threads - base);
    unsigned done = 0;
    for (int l = 0; l < lanes; ++l) {
      Fiber& f = F[static_cast<size_t>(base + l)];
      if (f.state != State::AtWarpOp || ((done >> l) & 1u)) continue;
      const unsigned m = f.mask;
      if (!((m >> l) & 1u))
        launch_error(L, thread_str(f.tid) + " calls " + f.op + " with mask " + hex(m) +
                            ", which does not include its own lane");
      unsigned arrived = 0;
      for (int j = 0; j < lanes; ++j) {
        if (!((m >> j) & 1u)) continue;
        const Fiber& g = F[static_cast<size_t>(base + j)];
        if (g.state == State::Exited) continue;  // exited lanes take no part
        if (g.state == State::AtWarpOp && g.mask == m && std::strcmp(g.op, f.op) == 0 &&
            g.bytes == f.bytes) {
          arrived |= 1u << j;
          continue;
        }
        std::string other = g.state == State::AtBarrier ? "waits at __syncthreads"
                            : g.state == State::AtWarpOp
                                ? std::string("waits at ") + g.op + " with mask " + hex(g.mask)
                                : "is running";
        launch_error(L, "divergent warp collective: lanes of warp " + std::to_string(w) +
                            " wait at " + f.op + " with mask " + hex(m) + ", but lane " +
                            std::to_string(j) + " of that mask " + other +
                            " (every non-exited lane of the mask must reach the same collective)");
      }
      // complete it
      for (int j = 0; j < lanes; ++j) {
        if (!((arrived >> j) & 1u)) continue;
        Fiber& g = F[static_cast<size_t>(base + j)];
        if (g.out != nullptr) {
          for (int k = 0; k < lanes; ++k) {
            if (!((arrived >> k) & 1u)) continue;
            const Fiber& h = F[static_cast<size_t>(base + k)];
            std::memcpy(static_cast<char*>(g.out) + static_cast<size_t>(k) * g.bytes, h.mine,
                        g.bytes);
          }
        }
        if (g.arrived) *g.arrived = arrived;
        g.state = State::Runnable;
      }
      if (f.out == nullptr && f.arrived == nullptr)
        L.warp_syncs[static_cast<size_t>(w)].push_back(arrived);
      done |= arrived;
      released = true;
    }
  }
  return released;
}

bool release_barrier(Launch& L) {
  std::vector<Fiber>& F = *L.fibers;
  std::vector<uint32_t> waiting, exited;
  for (int i = 0; i < L.threads; ++i) {
    const Fiber& f = F[static_cast<size_t>(i)];
    if (f.state == State::AtBarrier)
      waiting.push_back(f.tid);
    else if (f.state == State::Exited)
      exited.push_back(f.tid);
    else
      return false;
  }
  if (waiting.empty()) return false;
  if (!exited.empty())
    launch_error(L, "__syncthreads reached by threads " + ranges(waiting) + ", but threads " +
                        ranges(exited) +
                        " have exited: a barrier in code that not every thread of the block runs");
  for (int i = 0; i < L.threads; ++i) F[static_cast<size_t>(i)].state = State::Runnable;
  ++L.epoch;
  return true;
}

[[noreturn]] void deadlock(Launch& L) {
  std::vector<Fiber>& F = *L.fibers;
  std::vector<uint32_t> at_barrier, exited;
  std::ostringstream warp_ops;
  for (int i = 0; i < L.threads; ++i) {
    const Fiber& f = F[static_cast<size_t>(i)];
    if (f.state == State::AtBarrier) at_barrier.push_back(f.tid);
    if (f.state == State::Exited) exited.push_back(f.tid);
    if (f.state == State::AtWarpOp)
      warp_ops << " " << f.tid << ":" << f.op << "(" << hex(f.mask) << ")";
  }
  std::string msg = "deadlock: no thread can go on.";
  if (!at_barrier.empty()) msg += " At __syncthreads: threads " + ranges(at_barrier) + ".";
  if (!exited.empty()) msg += " Exited: threads " + ranges(exited) + ".";
  const std::string w = warp_ops.str();
  if (!w.empty()) msg += " At warp collectives:" + w.substr(0, 600) + ".";
  launch_error(L, msg);
}

void run_block(Launch& L, const Settings& st, const Dim& bidx, uint64_t block_linear) {
  std::vector<Fiber>& F = *L.fibers;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  L.block_idx = bidx;
  L.serial = ++g_serial;
  if (g_serial == 0xFFFFFFFFu) {  // the stale-record test needs serials never to repeat
    std::fill(g_shadow.begin(), g_shadow.end(), Shadow{});
    g_serial = 1;
    L.serial = 1;
  }
  L.epoch = 0;
  for (auto& h : L.warp_syncs) h.clear();
  // the allocations only: the redzones between them stay poisoned for ASan
  if (L.poison)
    for (const Region& g : L.regions) std::memset(L.arena + g.offset, 0xFF, g.bytes);
  for (int i = 0; i < L.threads; ++i) {
    Fiber& f = F[static_cast<size_t>(i)];
    f.state = State::Runnable;
    f.tid = static_cast<uint32_t>(i);
    f.pending.clear();
    const unsigned bx = L.block.x, by = L.block.y;
    f.ids.thread_idx = Dim{static_cast<unsigned>(i) % bx, (static_cast<unsigned>(i) / bx) % by,
                           static_cast<unsigned>(i) / (bx * by)};
    f.ids.block_idx = bidx;
    f.ids.block_dim = L.block;
    f.ids.grid_dim = L.grid;
    start_fiber(f, page);
  }
  make_order(L, st, block_linear);
  for (;;) {
    for (int i : L.order) {
      Fiber& f = F[static_cast<size_t>(i)];
      if (f.state != State::Runnable) continue;
      resume(f);
      if (L.failed) throw std::runtime_error("itnet emulator: " + where(L) + ": " + L.error);
    }
    bool live = false;
    for (int i = 0; i < L.threads && !live; ++i)
      live = F[static_cast<size_t>(i)].state != State::Exited;
    if (!live) break;
    if (release_warps(L)) continue;
    if (release_barrier(L)) continue;
    deadlock(L);
  }
}

}  // namespace

// ---- API ---------------------------------------------------------------------------------------
const ThreadIds& ids() { return running("a CUDA built-in variable").ids; }

bool set_max_dynamic_smem(const void* kernel, int bytes) {
  if (bytes < 0 || bytes > kSmemPerBlockOptin) return false;
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  g_max_dynamic[kernel] = bytes;
  return true;
}

void launch(const void* kernel, const char* name, Dim grid, Dim block, size_t dynamic_smem,
            void (*body)(void*), void* closure) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  const Settings st = settings();
  Launch L;
  L.name = name;
  L.grid = grid;
  L.block = block;
  L.dynamic = dynamic_smem;
  L.body = body;
  L.closure = closure;
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
  if (threads == 0 || threads > kMaxThreadsPerBlock || block.z > 64)
    launch_error(L, "invalid launch: " + std::to_string(threads) + " threads per block (block " +
                        dim_str(block) + "; at most " + std::to_string(kMaxThreadsPerBlock) +
                        ", z at most 64)");
  if (blocks == 0 || grid.x > 0x7FFFFFFFu || grid.y > 65535 || grid.z > 65535)
    launch_error(L, "invalid launch: grid " + dim_str(grid) +
                        " (x in [1, 2^31 - 1], y and z in [1, 65535])");
  {
    auto it = g_max_dynamic.find(kernel);
    const size_t allowed = it == g_max_dynamic.end() ? size_t(kSmemPerBlock)
                                                     : std::max<size_t>(kSmemPerBlock, it->second);
    if (dynamic_smem > allowed)
      launch_error(
          L, "invalid launch: " + std::to_string(dynamic_smem) +
                 " bytes of dynamic shared memory, more than the " + std::to_string(allowed) +
                 " allowed" +
                 (it == g_max_dynamic.end() ? " (above 48 KiB a kernel needs cudaFuncSetAttribute("
                                              "cudaFuncAttributeMaxDynamicSharedMemorySize) first)"
                                            : " by cudaFuncSetAttribute"));
  }
  L.threads = static_cast<int>(threads);
  ensure_fibers(threads);
  L.fibers = &g_fibers;
  if (g_arena == nullptr) {
    g_arena = static_cast<unsigned char*>(std::aligned_alloc(4096, kArenaBytes));
    if (!g_arena) throw std::bad_alloc();
    g_region_of.assign(kArenaBytes, -1);
    g_shadow.assign(kArenaBytes, Shadow{});
  }
  L.arena = g_arena;
  std::fill(g_region_of.begin(), g_region_of.end(), int16_t(-1));
#if defined(ITNET_EMU_ASAN)
  ASAN_POISON_MEMORY_REGION(g_arena, kArenaBytes);
#endif
  L.region_of = &g_region_of;
  L.poison = st.poison_shared;
  L.regions.push_back(Region{"dynamic (extern) shared memory", kDynamicOffset, dynamic_smem});
  mark_region(L, kDynamicOffset, dynamic_smem, 0);
  L.end = kDynamicOffset + ((dynamic_smem + 15) / 16) * 16 + kRedzone;
  L.warp_syncs.assign((threads + kWarp - 1) / kWarp, {});
#if defined(ITNET_EMU_INSTRUMENTED)
  L.checking = st.race_check;
#endif
  ++g_stats.launches;
  t_launch = &L;
  struct Reset {
    ~Reset() {
      t_launch = nullptr;
      t_fiber = nullptr;
    }
  } reset;
  uint64_t linear = 0;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x, ++linear) {
        run_block(L, st, Dim{x, y, z}, linear);
        ++g_stats.blocks;
      }
}

void sync_threads() {
  Fiber& f = running("__syncthreads");
  f.state = State::AtBarrier;
  switch_to_scheduler(f);  // until the scheduler releases it
}

void sync_warp(unsigned mask) {
  Fiber& f = running("__syncwarp");
  f.state = State::AtWarpOp;
  f.op = "__syncwarp";
  f.mask = mask;
  f.mine = nullptr;
  f.bytes = 0;
  f.out = nullptr;
  f.arrived = nullptr;
  switch_to_scheduler(f);  // until the scheduler releases it
}

void warp_exchange(const char* op, unsigned mask, const void* mine, size_t bytes, void* out,
                   unsigned* arrived) {
  Fiber& f = running(op);
  f.state = State::AtWarpOp;
  f.op = op;
  f.mask = mask;
  f.mine = mine;
  f.bytes = bytes;
  f.out = out;
  f.arrived = arrived;
  switch_to_scheduler(f);  // until the scheduler releases it
}

unsigned live_lanes() {
  Fiber& f = running("__activemask");
  const Launch& L = *t_launch;
  const uint32_t base = f.tid / kWarp * kWarp;
  unsigned m = 0;
  for (uint32_t l = 0; l < kWarp && base + l < static_cast<uint32_t>(L.threads); ++l)
    if ((*L.fibers)[base + l].state != State::Exited) m |= 1u << l;
  return m;
}

void* shared_static(const void* site, size_t bytes, size_t align, const char* name) {
  running("a __shared__ declaration");
  Launch& L = *t_launch;
  auto it = L.sites.find(site);
  if (it != L.sites.end()) return L.arena + L.regions[static_cast<size_t>(it->second)].offset;
  align = std::max<size_t>(align, 16);
  const size_t off = (L.end + align - 1) / align * align;
  if (L.static_bytes + bytes > size_t(kSmemPerBlock))
    fail_here("static shared memory of " + std::to_string(L.static_bytes + bytes) +
              " bytes (with '" + name + "'), more than 48 KiB");
  if (L.static_bytes + bytes + L.dynamic > size_t(kSmemPerBlockOptin))
    fail_here(std::to_string(L.static_bytes + bytes) + " bytes of static and " +
              std::to_string(L.dynamic) + " of dynamic shared memory, more than the " +
              std::to_string(kSmemPerBlockOptin) + " of a block");
  const int id = static_cast<int>(L.regions.size());
  L.regions.push_back(Region{name, off, bytes});
  L.sites.emplace(site, id);
  mark_region(L, off, bytes, static_cast<int16_t>(id));
  L.static_bytes += bytes;
  L.end = off + bytes + kRedzone;
  // poisoned like the rest of the block's shared memory
  if (L.poison) std::memset(L.arena + off, 0xFF, bytes);
  return L.arena + off;
}

void* shared_dynamic() {
  running("extern __shared__");
  return t_launch->arena + kDynamicOffset;
}

bool in_shared(const void* p) {
  running("a shared-memory address check");
  const uintptr_t a = reinterpret_cast<uintptr_t>(p),
                  base = reinterpret_cast<uintptr_t>(t_launch->arena);
  return a >= base && a < base + kArenaBytes;
}

void cp_async(void* dst, const void* src, int bytes, bool valid) {
  running("cp.async").pending.push_back(Copy{dst, src, bytes, valid});
}

void cp_async_commit() { running("cp.async.commit_group"); }

void cp_async_wait_all() {
  Fiber& f = running("cp.async.wait_group");
  for (const Copy& c : f.pending) {
    on_access(reinterpret_cast<uintptr_t>(c.dst), static_cast<size_t>(c.bytes), true);
    if (c.valid)
      std::memcpy(c.dst, c.src, static_cast<size_t>(c.bytes));
    else
      std::memset(c.dst, 0, static_cast<size_t>(c.bytes));
  }
  f.pending.clear();
}

void device_fail(const std::string& what) {
  fail_here(thread_str(running("a device check").tid) + ": " + what);
}

Settings settings() {
  std::lock_guard<std::mutex> lock(g_settings_mutex);
  return g_settings;
}

void configure(const Settings& s) {
  std::lock_guard<std::mutex> lock(g_settings_mutex);
  g_settings = s;
}

bool instrumented() {
#if defined(ITNET_EMU_INSTRUMENTED)
  return true;
#else
  return false;
#endif
}

Stats stats() {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  return g_stats;
}

void reset_stats() {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  g_stats = Stats{};
}

// The instrumentation's entry points (see tsan_hooks.cpp) report here.
void report_access(const void* p, size_t size, bool write) {
  on_access(reinterpret_cast<uintptr_t>(p), size, write);
}

}  // namespace emu
}  // namespace itnet
