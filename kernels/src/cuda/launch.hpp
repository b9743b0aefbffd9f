#pragma once
// Kernel launchers compiled by nvcc. This header is plain C++ (no fmt, no flexsp::expected) so
// that .cu files stay free of host-library templates nvcc cannot compile; the checked,
// expected-returning wrappers live in the .cpp files of the CUDA target.
#include <cstddef>

#include <cuda_runtime_api.h>

namespace flexsp::kernels::cuda {

/// y[i] += a * x[i] for i < n; device pointers. Returns the launch error.
cudaError_t launch_axpy(float a, const float* x, float* y, std::size_t n, cudaStream_t stream);

}  // namespace flexsp::kernels::cuda
