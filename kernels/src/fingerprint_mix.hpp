#pragma once
// The per-element term of kernels::fingerprint, shared by the CPU loop (ops.cpp) and the CUDA
// kernel (cuda/vector_ops.cu) so both compute the same value.
#include <cstdint>

#if defined(__CUDACC__)
#define FLEXSP_HOST_DEVICE __host__ __device__
#else
#define FLEXSP_HOST_DEVICE
#endif

namespace flexsp::kernels::detail {

/// splitmix64's finaliser (a bijection on 64-bit words) of the element's bits salted with its
/// position: different bits at one position always give a different term.
FLEXSP_HOST_DEVICE inline std::uint64_t fingerprint_term(std::uint32_t bits, std::uint64_t position) {
  std::uint64_t z = (position * 0x9E3779B97F4A7C15ull) ^ bits;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace flexsp::kernels::detail
