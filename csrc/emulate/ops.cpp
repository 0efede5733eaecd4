// The emulator's own operators (namespace itnet_emu, beside the schemas of
// csrc/ops.cpp that this library defines there too): its settings, its
// counters, and the control kernels (controls.cu) that the tests run to see
// each check catch the bug it is for. Python: itnet_ext.emulate.
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "emulate/runtime.h"

namespace itnet {
namespace emu {

// controls.cu: runs the control kernel `name` on a fresh float32 buffer of n
// elements and returns it.
at::Tensor run_control(const std::string& name, int64_t n);
std::vector<std::string> control_names();

namespace {

const char* order_name(Order o) {
  switch (o) {
    case Order::Forward: return "forward";
    case Order::Reverse: return "reverse";
    case Order::Shuffle: return "shuffle";
  }
  return "forward";
}

void configure_op(const std::string& order, int64_t seed, bool race_check, bool poison_shared) {
  Settings s;
  if (order == "forward")
    s.order = Order::Forward;
  else if (order == "reverse")
    s.order = Order::Reverse;
  else if (order == "shuffle")
    s.order = Order::Shuffle;
  else
    TORCH_CHECK(false, "order: expected \"forward\", \"reverse\" or \"shuffle\", got \"", order,
                "\"");
  TORCH_CHECK(seed >= 0, "seed: expected a non-negative integer, got ", seed);
  s.seed = static_cast<uint64_t>(seed);
  s.race_check = race_check;
  s.poison_shared = poison_shared;
  configure(s);
}

std::tuple<std::string, int64_t, bool, bool> settings_op() {
  const Settings s = settings();
  return {order_name(s.order), static_cast<int64_t>(s.seed), s.race_check, s.poison_shared};
}

std::vector<int64_t> stats_op() {
  const Stats s = stats();
  return {s.launches, s.blocks, s.switches, s.shared_accesses};
}

}  // namespace
}  // namespace emu
}  // namespace itnet

TORCH_LIBRARY_FRAGMENT(itnet_emu, m) {
  m.def("emu_configure(str order, int seed, bool race_check, bool poison_shared) -> ()",
        &itnet::emu::configure_op);
  // (order, seed, race_check, poison_shared)
  m.def("emu_settings() -> (str, int, bool, bool)", &itnet::emu::settings_op);
  // whether the kernels were compiled with the access instrumentation (race and
  // shared-bounds checks); false in the ASan build
  m.def("emu_instrumented() -> bool", &itnet::emu::instrumented);
  // [launches, blocks, fiber switches, checked shared-memory accesses]
  m.def("emu_stats() -> int[]", &itnet::emu::stats_op);
  m.def("emu_reset_stats() -> ()", &itnet::emu::reset_stats);
  m.def("emu_control(str name, int n) -> Tensor", &itnet::emu::run_control);
  m.def("emu_control_names() -> str[]", &itnet::emu::control_names);
}
