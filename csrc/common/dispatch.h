// Host-side dispatch of a run-time code to a compile-time template argument,
// written once (as ATen's AT_DISPATCH_* macros): the body is a generic lambda
// in which NAME is a constexpr value.
//
//   ITNET_DISPATCH_ACTIVATION(p.activation, A, return launch<T, A>(p, stream));
//   ITNET_DISPATCH_BOOL(p.mlp, kMlp, return bytes_of<kD, kMlp>(p));
//
// The activation switch is generated from ITNET_ACTIVATIONS
// (common/activation.h); an unknown code raises (TORCH_CHECK). Host code only.
#pragma once

#include <c10/util/Exception.h>

#include <type_traits>
#include <utility>

#include "common/activation.h"

namespace itnet {

template <class F>
inline decltype(auto) dispatch_activation(int code, F&& f) {
  switch (static_cast<Activation>(code)) {
#define ITNET_ACTIVATION_CASE_(NAME, STR, CODE) \
  case Activation::NAME:                        \
    return std::forward<F>(f)(std::integral_constant<Activation, Activation::NAME>{});
    ITNET_ACTIVATIONS(ITNET_ACTIVATION_CASE_)
#undef ITNET_ACTIVATION_CASE_
  }
  TORCH_CHECK(false, "activation: unknown value ", code);
}

template <class F>
inline decltype(auto) dispatch_bool(bool flag, F&& f) {
  if (flag) return std::forward<F>(f)(std::true_type{});
  return std::forward<F>(f)(std::false_type{});
}

}  // namespace itnet

#define ITNET_DISPATCH_ACTIVATION(code, ACT, ...)                                    \
  ::itnet::dispatch_activation(static_cast<int>(code), [&](auto itnet_act_tag_) {   \
    constexpr ::itnet::Activation ACT = decltype(itnet_act_tag_)::value;            \
    __VA_ARGS__;                                                                     \
  })

#define ITNET_DISPATCH_BOOL(flag, NAME, ...)                                         \
  ::itnet::dispatch_bool(static_cast<bool>(flag), [&](auto itnet_bool_tag_) {       \
    constexpr bool NAME = decltype(itnet_bool_tag_)::value;                          \
    __VA_ARGS__;                                                                     \
  })
