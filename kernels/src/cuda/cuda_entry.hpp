#pragma once
// Entry points of the CUDA target, called only from cuda_backend.cpp.
#include <span>

#include "flexsp/kernels/cuda_runtime.hpp"

namespace flexsp::kernels::cuda {
cuda_status query();
expected<void> axpy(float a, std::span<const float> x, std::span<float> y);
}  // namespace flexsp::kernels::cuda
