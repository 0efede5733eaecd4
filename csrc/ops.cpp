// Every schema of the itnet operator library, once. Backends register their
// kernels with TORCH_LIBRARY_IMPL next to the kernels (dense/cpu.cpp,
// dense/dense_cuda.cpp, scan/cpu.cpp, sparse/cpu.cpp, ...); fake kernels and
// autograd live in Python (itnet_ext/ops/). The emulated-CUDA library
// (csrc/emulate/, ITNET_EMULATE) defines the same schemas under the namespace
// itnet_emu, where its CPU-tensor kernels are the CUDA kernels run by the
// device emulator.
#include <torch/library.h>

#include <string>
#include <vector>

#include "common/activation.h"
#include "common/enum_names.h"
#include "common/capability.h"
#include "lowrank/params.h"
#ifdef ITNET_WITH_CUDA
#include "dense/flash/sweep.h"
#endif

namespace itnet {

bool cuda_kernels_compiled() {
#ifdef ITNET_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// The flash configuration sweep (dense/flash/sweep.h): which configurations
// this build has, which are selected, and selecting them. A build without the
// CUDA kernels has none.
std::vector<std::string> flash_configs(bool backward) {
#ifdef ITNET_WITH_CUDA
  return dense::flash::sweep_names(backward);
#else
  (void)backward;
  return {};
#endif
}

std::vector<std::string> flash_config() {
#ifdef ITNET_WITH_CUDA
  return dense::flash::selected_sweep();
#else
  return {"", ""};
#endif
}

void set_flash_config(const std::string& fwd, const std::string& bwd) {
#ifdef ITNET_WITH_CUDA
  dense::flash::select_sweep(fwd, bwd);
#else
  TORCH_CHECK(fwd.empty() && bwd.empty(), "set_flash_config: this build of itnet_ext has no CUDA "
              "kernels, so no flash configurations; only the default (\"\", \"\") is accepted");
#endif
}

// The names of an enum whose codes are op arguments, in code order (the code
// of a name is its position): "activation" (the pair MLP's `activation`),
// "feature_map" and "stabilizer" (the low-rank ops' `feature_map`,
// `stabilize`). Read by the Python wrappers, so the C++ lists are the only
// copy (docs/design.md section 4).
std::vector<std::string> enum_names(const std::string& kind) {
  if (kind == "activation") return names_vector(kActivationNames);
  if (kind == "feature_map") return names_vector(lowrank::kFeatureMapNames);
  if (kind == "stabilizer") return names_vector(lowrank::kStabilizerNames);
  TORCH_CHECK(false, "enum_names: kind: expected one of \"activation\", \"feature_map\", "
              "\"stabilizer\", got \"", kind, "\"");
}

}  // namespace itnet

// The arguments shared by forward and backward of the dense op, in order.
#define ITNET_DENSE_ARGS                                                                   \
  "Tensor? q, Tensor? k, Tensor v, Tensor? u, Tensor? t, Tensor? W2, Tensor? b2, "        \
  "Tensor? offset_table, Tensor? q_pos, Tensor? k_pos, Tensor? key_weight, "              \
  "Tensor? key_padding_mask, Tensor? attn_mask, float[] window_lo, float[] window_hi, "   \
  "float scale, int activation, bool softmax, bool causal"

// The arguments of the sparse op: the dense op's kernel terms, then the pairs.
#define ITNET_SPARSE_ARGS                                                                  \
  "Tensor? q, Tensor? k, Tensor v, Tensor? u, Tensor? t, Tensor? W2, Tensor? b2, "        \
  "Tensor? offset_table, Tensor? q_pos, Tensor? k_pos, Tensor row_ptr, Tensor col_idx, "  \
  "Tensor? log_w, float[] window_lo, float[] window_hi, float scale, int activation, "    \
  "bool softmax"

#ifndef ITNET_OPS_NS
#define ITNET_OPS_NS itnet
#endif
// TORCH_LIBRARY pastes its namespace argument: expand ITNET_OPS_NS first.
#define ITNET_TORCH_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)

ITNET_TORCH_LIBRARY(ITNET_OPS_NS, m) {
  // Dense integral transform. Returns (out (B, H, N, Dv), lse (B, H, N));
  // lse is an empty tensor in `none` mode (softmax=False).
  m.def("dense_fwd(" ITNET_DENSE_ARGS ") -> (Tensor out, Tensor lse)");
  // Gradients w.r.t. (q, k, v, u, t, W2, b2, offset_table, key_weight); an
  // input that was not given gets an empty tensor.
  // grad_lse (optional): gradient w.r.t. the lse output (softmax mode).
  m.def("dense_bwd(Tensor grad_out, Tensor out, Tensor lse, Tensor? grad_lse, " ITNET_DENSE_ARGS
        ") -> (Tensor dq, Tensor dk, Tensor dv, Tensor du, Tensor dt, Tensor dW2, Tensor db2, "
        "Tensor doffset_table, Tensor dkey_weight)");
  // Decay scan (docs/design.md section 2, low-rank causal with a decay; see
  // itnet_ext.functional.decay_scan). log_decay is 4-D (B|1, T|1, D, Rk|1),
  // or None with the factored pair (dt (B, T, D), A (D, Rk)); phi / psi are
  // (B, T, G, Rk). Returns y (B, T, D) and the state after the last step.
  // checkpoint=True (CPU) also returns the state before every 64th step,
  // (B, D, ceil(T / 64), Rk), for the backward; otherwise an empty tensor.
  m.def("decay_scan_fwd(Tensor x, Tensor? log_decay, Tensor? dt, Tensor? A, Tensor phi, "
        "Tensor psi, Tensor? skip, Tensor? initial_state, bool checkpoint=False) -> "
        "(Tensor y, Tensor final_state, Tensor checkpoints)");
  // Gradients w.r.t. (x, log_decay, dt, A, phi, psi, skip, initial_state); an
  // input that was not given gets an empty tensor. checkpoints: the forward's
  // (optional; kernels that do not use them recompute the states).
  m.def("decay_scan_bwd(Tensor grad_y, Tensor? grad_final_state, Tensor x, Tensor? log_decay, "
        "Tensor? dt, Tensor? A, Tensor phi, Tensor psi, Tensor? skip, Tensor? initial_state, "
        "Tensor? checkpoints=None) -> "
        "(Tensor dx, Tensor dlog_decay, Tensor ddt, Tensor dA, Tensor dphi, Tensor dpsi, "
        "Tensor dskip, Tensor dinitial_state)");
  // Sparse (pair-list) integral transform (docs/design.md section 2, sampled and
  // neighbourhoods): the dense op's kernel terms evaluated on the pairs
  // row_ptr (B, N + 1) / col_idx (B, E) with per-pair log-weights log_w
  // (B, E) (-inf = absent pair; see itnet_ext.functional.sparse_integral_transform,
  // whose padded form (B, N, S) is CSR with row_ptr[b, i] = i * S).
  // Returns (out (B, H, N, Dv), lse (B, H, N), empty in `none` mode).
  m.def("sparse_fwd(" ITNET_SPARSE_ARGS ") -> (Tensor out, Tensor lse)");
  // Gradients w.r.t. (q, k, v, u, t, W2, b2, offset_table, log_w); an input
  // that was not given gets an empty tensor.
  m.def("sparse_bwd(Tensor grad_out, Tensor out, Tensor lse, Tensor? grad_lse, "
        ITNET_SPARSE_ARGS ") -> (Tensor dq, Tensor dk, Tensor dv, Tensor du, Tensor dt, "
        "Tensor dW2, Tensor db2, Tensor doffset_table, Tensor dlog_w)");
  // Low-rank integral transform (docs/design.md section 2, lowrank), non-causal, with
  // the feature map applied in the kernel (feature_map: 0 identity, 1 elu+1,
  // 2 relu, 3 favor+ with its (F, Dk) projection): out_i = phi_i^T S
  // [/ phi_i^T z] with S = sum_j psi_j v_j^T, z = sum_j psi_j; rows with
  // |den| <= eps output 0. Accumulates in float32 for half inputs; out in
  // v's dtype. See itnet_ext.functional.lowrank_integral_transform.
  m.def("lowrank_fwd(Tensor q, Tensor k, Tensor v, Tensor? projection, int feature_map, "
        "bool softmax, float eps) -> Tensor");
  // Gradients w.r.t. (q, k, v); the projection gets none (a random buffer).
  // Recomputes the features and sums; nothing of the forward is saved.
  m.def("lowrank_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor? projection, "
        "int feature_map, bool softmax, float eps) -> (Tensor dq, Tensor dk, Tensor dv)");
  // The feature map alone, x (..., n, Dk) -> phi (..., n, F) in the compute
  // dtype (float32 for half x): the causal path's features, whose prefix sums
  // the decay scan evaluates. stabilize (favor+ only): 0 none, 1 per row
  // (queries), 2 one constant per (..., n, F) slice (keys).
  m.def("lowrank_features(Tensor x, Tensor? projection, int feature_map, int stabilize) -> "
        "Tensor");
  m.def("lowrank_features_bwd(Tensor grad_phi, Tensor x, Tensor? projection, int feature_map, "
        "int stabilize) -> Tensor");
  m.def("cpu_capability() -> str", &itnet::cpu_capability_in_use);
  m.def("cuda_kernels_compiled() -> bool", &itnet::cuda_kernels_compiled);
  // enum_names(kind) -> the names of the codes 0, 1, ... of an int argument:
  // kind "activation" (dense / sparse ops), "feature_map", "stabilizer"
  // (low-rank ops). Any other kind raises.
  m.def("enum_names(str kind) -> str[]", &itnet::enum_names);
  // The flash configuration sweep (float16 / bfloat16 CUDA kernels of the dense op;
  // built with ITNET_FLASH_SWEEP): the compiled forward (backward=False) or
  // backward configurations, the selected pair (fwd, bwd; "" = default) and the
  // selection, process-wide, for benchmarks (itnet_ext.dense.sweep).
  m.def("flash_configs(bool backward) -> str[]", &itnet::flash_configs);
  m.def("flash_config() -> str[]", &itnet::flash_config);
  m.def("set_flash_config(str fwd, str bwd) -> ()", &itnet::set_flash_config);
}
