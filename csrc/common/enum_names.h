// Host-side views of an enum's names table (common/enum_table.h): the list
// returned by the enum_names op and the code listings of argument errors.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace itnet {

template <std::size_t N>
std::vector<std::string> names_vector(const char* const (&names)[N]) {
  return std::vector<std::string>(names, names + N);
}

// "0 (relu), 1 (gelu) or 2 (silu)"
template <std::size_t N>
std::string codes_listing(const char* const (&names)[N]) {
  std::string s;
  for (std::size_t i = 0; i < N; ++i) {
    if (i > 0) s += i + 1 == N ? " or " : ", ";
    s += std::to_string(i) + " (" + names[i] + ")";
  }
  return s;
}

// "identity, elu+1, relu, favor+"
template <std::size_t N>
std::string names_joined(const char* const (&names)[N], const char* sep = ", ") {
  std::string s;
  for (std::size_t i = 0; i < N; ++i) {
    if (i > 0) s += sep;
    s += names[i];
  }
  return s;
}

}  // namespace itnet
