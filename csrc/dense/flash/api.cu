// Host dispatch of the flash kernels: (dtype, head-dim bucket) -> the
// instance compiled in fwd_*.cu / bwd_*.cu, or the selected sweep instance
// (sweep.h), and the shared-memory sizes the entry point checks against the
// device before choosing these kernels.
#include <c10/util/Exception.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <mutex>

#include "common/dispatch.h"
#include "dense/flash/config.h"
#include "dense/flash/sweep.h"

namespace itnet {
namespace dense {
namespace flash {
namespace {

template <int kD>
int64_t fwd_bytes(const FwdParams& p) {
  return p.mlp ? fwd_bytes_cfg<FwdTiles<kD, true>>(p) : fwd_bytes_cfg<FwdTiles<kD, false>>(p);
}

template <class T>
void fwd_typed(const FwdParams& p, cudaStream_t stream) {
  switch (head_dim_bucket(p.Dk, p.Dv)) {
    case 64: return launch_fwd<T, 64>(p, stream);
    case 128: return launch_fwd<T, 128>(p, stream);
    default: return launch_fwd<T, 256>(p, stream);
  }
}

template <class T>
void bwd_typed(const BwdParams& bp, const FlashGrads& g, cudaStream_t stream) {
  const int d = head_dim_bucket(bp.f.Dk, bp.f.Dv);
  TORCH_CHECK(d <= kMaxHeadDimBwd, "flash backward: head dim ", d, " above ", kMaxHeadDimBwd);
  if (d == 64) return launch_bwd<T, 64>(bp, g, stream);
  return launch_bwd<T, 128>(bp, g, stream);
}

// ---- the configuration sweep (sweep.h) -------------------------------------
// Registered at load time by the sweep instance files (static initializers:
// function-local statics, so the order of the files does not matter).
std::vector<FwdSweep>& fwd_sweeps() {
  static std::vector<FwdSweep> v;
  return v;
}
std::vector<BwdSweep>& bwd_sweeps() {
  static std::vector<BwdSweep> v;
  return v;
}
std::mutex& sweep_mutex() {
  static std::mutex m;
  return m;
}
// The selected configurations, "" = the default ones.
std::string& selected(bool backward) {
  static std::string s[2];
  return s[backward ? 1 : 0];
}
// Whether either is selected: the calls of the default configuration (every call outside a
// benchmark) skip the mutex and the lookup.
std::atomic<bool> g_any_selected{false};

const char* dtype_name(Dtype dt) { return dt == Dtype::Half ? "float16" : "bfloat16"; }

// The selected sweep instance for (head dim, dtype) of a call, or null for the
// default kernels. dtype -1: any (shared-memory sizes do not depend on it).
template <class S>
const S* find_sweep(const std::vector<S>& all, const std::string& name, int d, int dtype) {
  if (name.empty()) return nullptr;
  for (const S& s : all)
    if (name == s.name && s.head_dim == d && (dtype < 0 || static_cast<int>(s.dtype) == dtype))
      return &s;
  TORCH_CHECK(false, "flash config '", name, "' has no instance for head dim ", d,
              dtype < 0 ? "" : " and dtype ", dtype < 0 ? "" : dtype_name(static_cast<Dtype>(dtype)),
              " (the sweep is compiled for head dims 64 and 128; select the default "
              "configuration with an empty name)");
  return nullptr;
}

const FwdSweep* fwd_sweep(const FwdParams& p, int dtype) {
  if (!g_any_selected.load(std::memory_order_acquire)) return nullptr;
  std::lock_guard<std::mutex> lock(sweep_mutex());
  return find_sweep(fwd_sweeps(), selected(false), head_dim_bucket(p.Dk, p.Dv), dtype);
}

const BwdSweep* bwd_sweep(const FwdParams& p, int dtype) {
  if (!g_any_selected.load(std::memory_order_acquire)) return nullptr;
  std::lock_guard<std::mutex> lock(sweep_mutex());
  return find_sweep(bwd_sweeps(), selected(true), head_dim_bucket(p.Dk, p.Dv), dtype);
}

template <class S>
void add_unique_name(std::vector<std::string>& names, const std::vector<S>& all) {
  for (const S& s : all) {
    bool seen = false;
    for (const std::string& n : names) seen = seen || n == s.name;
    if (!seen) names.emplace_back(s.name);
  }
}

}  // namespace

void check_sweep_activation(int activation) {
  TORCH_CHECK(activation == static_cast<int>(kSweepActivation),
              "flash sweep configurations are compiled for the pair MLP with activation '",
              kActivationNames[static_cast<int>(kSweepActivation)], "' only, got '",
              kActivationNames[activation], "'");
}

void add_fwd_sweep(const FwdSweep& s) {
  std::lock_guard<std::mutex> lock(sweep_mutex());
  fwd_sweeps().push_back(s);
}

void add_bwd_sweep(const BwdSweep& s) {
  std::lock_guard<std::mutex> lock(sweep_mutex());
  bwd_sweeps().push_back(s);
}

std::vector<std::string> sweep_names(bool backward) {
  std::lock_guard<std::mutex> lock(sweep_mutex());
  std::vector<std::string> names;
  if (backward)
    add_unique_name(names, bwd_sweeps());
  else
    add_unique_name(names, fwd_sweeps());
  std::sort(names.begin(), names.end());  // registration follows the link order
  return names;
}

void select_sweep(const std::string& fwd, const std::string& bwd) {
  std::lock_guard<std::mutex> lock(sweep_mutex());
  auto known = [](const auto& all, const std::string& name) {
    if (name.empty()) return true;
    for (const auto& s : all)
      if (name == s.name) return true;
    return false;
  };
  TORCH_CHECK(known(fwd_sweeps(), fwd), "set_flash_config: fwd: no forward configuration '", fwd,
              "' in this build (", fwd_sweeps().size(),
              " sweep instances; build with ITNET_FLASH_SWEEP=all for the sweep)");
  TORCH_CHECK(known(bwd_sweeps(), bwd), "set_flash_config: bwd: no backward configuration '", bwd,
              "' in this build (", bwd_sweeps().size(),
              " sweep instances; build with ITNET_FLASH_SWEEP=all for the sweep)");
  selected(false) = fwd;
  selected(true) = bwd;
  g_any_selected.store(!fwd.empty() || !bwd.empty(), std::memory_order_release);
}

std::vector<std::string> selected_sweep() {
  std::lock_guard<std::mutex> lock(sweep_mutex());
  return {selected(false), selected(true)};
}

// ---- the host interface (flash.h) -------------------------------------------
int64_t fwd_smem_bytes(const FwdParams& p) {
  if (const FwdSweep* s = fwd_sweep(p, -1)) return s->smem_bytes(p);
  switch (head_dim_bucket(p.Dk, p.Dv)) {
    case 64: return fwd_bytes<64>(p);
    case 128: return fwd_bytes<128>(p);
    default: return fwd_bytes<256>(p);
  }
}

int64_t bwd_smem_bytes(const FwdParams& p, bool want_dE) {
  if (const BwdSweep* s = bwd_sweep(p, -1)) return s->smem_bytes(p, want_dE);
  return head_dim_bucket(p.Dk, p.Dv) <= 64 ? bwd_bytes_cfg<BwdTiles<64>>(p, want_dE)
                                           : bwd_bytes_cfg<BwdTiles<128>>(p, want_dE);
}

// FlashGrads' per-key-tile buffers are sized with one key-tile width for all buckets
static_assert(BwdTiles<64>::kBk == BwdTiles<128>::kBk, "bwd_key_tiles assumes one kBk");

int64_t bwd_key_tiles(const FwdParams& p) {
  const BwdSweep* s = bwd_sweep(p, -1);
  const int64_t kBk = s != nullptr ? s->key_tile : BwdTiles<64>::kBk;
  return (p.M + kBk - 1) / kBk;
}

void fwd(const FwdParams& p, Dtype dt, cudaStream_t stream) {
  if (p.B * p.H * p.N == 0) return;
  if (const FwdSweep* s = fwd_sweep(p, static_cast<int>(dt))) return s->run(p, stream);
  if (dt == Dtype::Half) return fwd_typed<__half>(p, stream);
  return fwd_typed<__nv_bfloat16>(p, stream);
}

void bwd(const BwdParams& bp, const FlashGrads& g, Dtype dt, cudaStream_t stream) {
  const FwdParams& p = bp.f;
  if (p.B * p.H * (p.N + p.M) == 0) return;
  if (const BwdSweep* s = bwd_sweep(p, static_cast<int>(dt))) return s->run(bp, g, stream);
  if (dt == Dtype::Half) return bwd_typed<__half>(bp, g, stream);
  return bwd_typed<__nv_bfloat16>(bp, g, stream);
}

}  // namespace flash
}  // namespace dense
}  // namespace itnet
