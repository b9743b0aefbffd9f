// The one place that knows whether the CUDA backend is compiled in.
#include "flexsp/kernels/cuda_runtime.hpp"

#if FLEXSP_HAVE_CUDA
#include "cuda/cuda_entry.hpp"
#endif

namespace flexsp::kernels {

expected<void> axpy_cpu(float a, std::span<const float> x, std::span<float> y) {
  if (x.size() != y.size())
    return make_error(errc::invalid_argument, "axpy: x has {} elements but y has {}", x.size(), y.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] += a * x[i];
  return {};
}

#if FLEXSP_HAVE_CUDA
cuda_status query_cuda() { return cuda::query(); }
expected<void> axpy_cuda(float a, std::span<const float> x, std::span<float> y) { return cuda::axpy(a, x, y); }
#else
cuda_status query_cuda() {
  cuda_status s;
  s.reason = "this build has no CUDA backend (configured with FLEXSP_ENABLE_CUDA=OFF or without nvcc)";
  return s;
}
expected<void> axpy_cuda(float, std::span<const float>, std::span<float>) {
  return make_error(errc::unimplemented, "CUDA backend not compiled in");
}
#endif

}  // namespace flexsp::kernels
