#pragma once
// Element types of device buffers: fp32 (`float`) and bfloat16 stored as its 16 bits
// (`std::uint16_t`, the upper half of an fp32). Kernels load either as float and compute in
// fp32; stores round to nearest even, NaN stays NaN.
#include <cstdint>

namespace flexsp::kernels::cuda {

__device__ __forceinline__ float load_f32(float x) { return x; }
__device__ __forceinline__ float load_f32(std::uint16_t x) { return __uint_as_float(static_cast<std::uint32_t>(x) << 16); }

__device__ __forceinline__ std::uint16_t round_to_bf16(float f) {
  const std::uint32_t bits = __float_as_uint(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40u);  // quiet NaN
  return static_cast<std::uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

template <class T>
__device__ __forceinline__ T store_as(float f);
template <>
__device__ __forceinline__ float store_as<float>(float f) {
  return f;
}
template <>
__device__ __forceinline__ std::uint16_t store_as<std::uint16_t>(float f) {
  return round_to_bf16(f);
}

}  // namespace flexsp::kernels::cuda
