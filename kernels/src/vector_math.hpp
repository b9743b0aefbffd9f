#pragma once
// Branch-free elementary functions for loops that must vectorise (libm's expf and tanhf are
// calls the compiler cannot vectorise). Private to the CPU kernels.

#include <bit>
#include <cstdint>

namespace flexsp::kernels::detail {

// exp(x) for -2^22 <= x <= 0 (softmax arguments after subtracting the row max), to ~2 ulp:
// range reduction to r in [-ln2/2, ln2/2] and a degree-6 Taylor polynomial. Written without
// calls or float branches so that loops over a tile row vectorise (libm's expf does not);
// below -87 the result is clamped to about 1e-38 instead of underflowing to 0.
inline float exp_core(float x) {
  const float t = x * 1.44269504088896341f;
  const float shifted = t + 0x1.8p23f;  // rounds t to the nearest integer in the low bits
  const std::int32_t n = std::bit_cast<std::int32_t>(shifted) - 0x4B400000;
  const float fn = shifted - 0x1.8p23f;
  const float r = (x - fn * 0.693145751953125f) - fn * 1.42860682030941723212e-6f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const std::int32_t clamped = n > -126 ? n : -126;
  return std::bit_cast<float>(std::bit_cast<std::int32_t>(p) + clamped * (1 << 23));
}

// tanh(u) = sign(u) (1 - e) / (1 + e) with e = exp(-2|u|); absolute error ~1e-7.
inline float tanh_approx(float u) {
  const std::uint32_t sign = std::bit_cast<std::uint32_t>(u) & 0x80000000u;
  const float a = std::bit_cast<float>(std::bit_cast<std::uint32_t>(u) & 0x7fffffffu);
  const float e = exp_core(-2.0f * a);
  const float t = (1.0f - e) / (1.0f + e);
  return std::bit_cast<float>(std::bit_cast<std::uint32_t>(t) | sign);
}

}  // namespace flexsp::kernels::detail
