// Helpers that turn an X-macro list of an enum, entries X(Member, "name", code),
// into the enum's members, its names and its codes: the list is the one place
// an enum's values are written (docs/design.md section 4: the Python side
// reads the names through torch.ops.itnet.enum_names, csrc/ops.cpp). Plain
// C++, usable from CUDA translation units.
#pragma once

#include <cstddef>

#define ITNET_ENUM_MEMBER(NAME, STR, CODE) NAME = CODE,
#define ITNET_ENUM_NAME(NAME, STR, CODE) STR,
#define ITNET_ENUM_CODE(NAME, STR, CODE) CODE,

namespace itnet {

// The codes are the positions 0, 1, ... of the list, so that the names list
// read by Python is indexed by code.
template <std::size_t N>
constexpr bool codes_are_positions(const int (&codes)[N]) {
  for (std::size_t i = 0; i < N; ++i)
    if (codes[i] != static_cast<int>(i)) return false;
  return true;
}

}  // namespace itnet
