// The flash configuration sweep: kernel instances with other tile shapes,
// warp counts, load stages and packed MLP math than the defaults (config.h),
// compiled only on request (ITNET_FLASH_SWEEP, setup.py; one file per
// configuration and dtype under sweep/) and selected at run time for
// benchmarking: torch.ops.itnet.set_flash_config(fwd, bwd), itnet_ext.dense.sweep.
// Each instance file registers its launchers here when the library loads.
//
// Plain C++ (the host dispatcher api.cu keeps the registry).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/activation.h"
#include "dense/flash/flash.h"

namespace itnet {
namespace dense {
namespace flash {

// The sweep instances compile the pair MLP with this activation only (its
// default); the configurations differ in their tiles, not their activation.
constexpr Activation kSweepActivation = Activation::Gelu;
void check_sweep_activation(int activation);

struct FwdSweep {
  const char* name;
  int head_dim;  // bucket (64, 128)
  Dtype dtype;
  void (*run)(const FwdParams&, cudaStream_t);
  int64_t (*smem_bytes)(const FwdParams&);
};

struct BwdSweep {
  const char* name;
  int head_dim;
  Dtype dtype;
  void (*run)(const BwdParams&, const FlashGrads&, cudaStream_t);
  int64_t (*smem_bytes)(const FwdParams&, bool want_dE);
  int key_tile;  // keys per block of the key pass (FlashGrads' per-key-tile sums)
};

void add_fwd_sweep(const FwdSweep& s);
void add_bwd_sweep(const BwdSweep& s);

// Names of the compiled configurations, sorted.
std::vector<std::string> sweep_names(bool backward);
// Selects the configurations the next calls use ("" = the default); a name
// that was not compiled is an error.
void select_sweep(const std::string& fwd, const std::string& bwd);
// The selected names ("" = default): {fwd, bwd}.
std::vector<std::string> selected_sweep();

}  // namespace flash
}  // namespace dense
}  // namespace itnet
