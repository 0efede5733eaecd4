// The pair MLP's hidden activation (docs/design.md section 1: relu, gelu in
// its tanh form, silu): its names table and its formulas, written once for
// every backend (scalar host / CUDA device lanes and CPU SIMD lanes, through
// common/math.h's Ops<T>).
//
// Adding an activation: one entry in ITNET_ACTIVATIONS and its Act<>
// specialization below. The dispatch (common/dispatch.h), the argument check
// (common/prepare_terms.cpp) and the Python names (torch.ops.itnet.enum_names
// ("activation")) follow from the list.
#pragma once

#include "common/enum_table.h"
#include "common/macros.h"
#include "common/math.h"

// X(Member, "name", code). The codes are part of the op schemas
// (`int activation`) and are the positions in the list: keep them stable.
#define ITNET_ACTIVATIONS(X) \
  X(Relu, "relu", 0)         \
  X(Gelu, "gelu", 1)         \
  X(Silu, "silu", 2)

namespace itnet {

enum class Activation : int { ITNET_ACTIVATIONS(ITNET_ENUM_MEMBER) };

// Names in code order.
constexpr const char* kActivationNames[] = {ITNET_ACTIVATIONS(ITNET_ENUM_NAME)};
constexpr int kActivationCodes[] = {ITNET_ACTIVATIONS(ITNET_ENUM_CODE)};
constexpr int kNumActivations = static_cast<int>(sizeof(kActivationCodes) / sizeof(int));
static_assert(codes_are_positions(kActivationCodes),
              "ITNET_ACTIVATIONS: the codes must be 0, 1, ... in list order");

// act(x) and, in the same pass, d act / dx (the backward needs both).
// GELU is the tanh form: 0.5 x (1 + tanh(c (x + 0.044715 x^3))), c = sqrt(2/pi),
// the function of torch.nn.functional.gelu(x, approximate="tanh").
template <Activation A, class T>
struct Act;

template <class T>
struct Act<Activation::Relu, T> {
  static ITNET_HD T fwd(T x) { return Ops<T>::relu(x); }
  static ITNET_HD T fwd_grad(T x, T& dydx) {
    dydx = Ops<T>::step(x);
    return Ops<T>::relu(x);
  }
};

template <class T>
struct Act<Activation::Gelu, T> {
  // 0.5 (1 + tanh(z)) = sigmoid(2 z): the same function in fewer operations,
  // x / (1 + exp(-2 z)), with -2 z = x (k1 + k3 x^2),
  // k1 = -2 sqrt(2/pi), k3 = 0.044715 k1.
  static ITNET_HD T sigmoid_2z(T x) {
    return T(1) / (T(1) + Ops<T>::exp(x * (T(-1.5957691216057308) +
                                           T(-1.5957691216057308 * 0.044715) * x * x)));
  }
  static ITNET_HD T fwd(T x) { return x * sigmoid_2z(x); }
  // d/dx [x s] = s + x s (1 - s) d(2z)/dx,  d(2z)/dx = -(k1 + 3 k3 x^2)
  static ITNET_HD T fwd_grad(T x, T& dydx) {
    const T s = sigmoid_2z(x);
    dydx = s + x * s * (T(1) - s) *
                   (T(1.5957691216057308) + T(3 * 1.5957691216057308 * 0.044715) * x * x);
    return x * s;
  }
};

template <class T>
struct Act<Activation::Silu, T> {
  static ITNET_HD T sigmoid(T x) { return T(1) / (T(1) + Ops<T>::exp(T(0) - x)); }
  static ITNET_HD T fwd(T x) { return x * sigmoid(x); }
  static ITNET_HD T fwd_grad(T x, T& dydx) {
    const T s = sigmoid(x);
    dydx = s * (T(1) + x * (T(1) - s));
    return x * s;
  }
};

}  // namespace itnet
