// Vector kernels: the first CUDA translation unit of the build.
#include <algorithm>

#include "launch.hpp"

namespace flexsp::kernels::cuda {
namespace {

__global__ void axpy_kernel(float a, const float* __restrict__ x, float* __restrict__ y, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    y[i] += a * x[i];
}

}  // namespace

cudaError_t launch_axpy(float a, const float* x, float* y, std::size_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  constexpr unsigned threads = 256;
  // A grid-stride loop: cap the grid, each thread covers several elements on huge inputs.
  const auto blocks = static_cast<unsigned>(std::min<std::size_t>((n + threads - 1) / threads, 4096));
  axpy_kernel<<<blocks, threads, 0, stream>>>(a, x, y, n);
  return cudaGetLastError();
}

}  // namespace flexsp::kernels::cuda
