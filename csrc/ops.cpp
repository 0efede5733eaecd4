// Every schema of the itnet operator library, once. Backends register their
// kernels with TORCH_LIBRARY_IMPL next to the kernels (dense/cpu.cpp,
// dense/dense_cuda.cpp); fake kernels and autograd live in Python (itnet_ext/ops/).
#include <torch/library.h>

#include "dense/info.h"

namespace itnet {

bool cuda_kernels_compiled() {
#ifdef ITNET_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace itnet

// The arguments shared by forward and backward of the dense op, in order.
#define ITNET_DENSE_ARGS                                                                   \
  "Tensor? q, Tensor? k, Tensor v, Tensor? u, Tensor? t, Tensor? W2, Tensor? b2, "        \
  "Tensor? offset_table, Tensor? q_pos, Tensor? k_pos, Tensor? key_weight, "              \
  "Tensor? key_padding_mask, Tensor? attn_mask, float[] window_lo, float[] window_hi, "   \
  "float scale, int activation, bool softmax, bool causal"

TORCH_LIBRARY(itnet, m) {
  // Dense integral transform. Returns (out (B, H, N, Dv), lse (B, H, N));
  // lse is an empty tensor in `none` mode (softmax=False).
  m.def("dense_fwd(" ITNET_DENSE_ARGS ") -> (Tensor out, Tensor lse)");
  // Gradients w.r.t. (q, k, v, u, t, W2, b2, offset_table, key_weight); an
  // input that was not given gets an empty tensor.
  // grad_lse (optional): gradient w.r.t. the lse output (softmax mode).
  m.def("dense_bwd(Tensor grad_out, Tensor out, Tensor lse, Tensor? grad_lse, " ITNET_DENSE_ARGS
        ") -> (Tensor dq, Tensor dk, Tensor dv, Tensor du, Tensor dt, Tensor dW2, Tensor db2, "
        "Tensor doffset_table, Tensor dkey_weight)");
  m.def("cpu_capability() -> str", &itnet::dense::cpu_capability_in_use);
  m.def("cuda_kernels_compiled() -> bool", &itnet::cuda_kernels_compiled);
}
