// Host side of the CUDA backend: runtime queries and checked wrappers around the launchers.
#include "cuda_entry.hpp"
#include "device_buffer.hpp"
#include "launch.hpp"
#include "libraries.hpp"

namespace flexsp::kernels::cuda {

cuda_status query() {
  cuda_status s;
  s.compiled = true;
  // Versions are informational: a failure leaves them at 0, which is what they report.
  if (::cudaRuntimeGetVersion(&s.runtime_version) != cudaSuccess) s.runtime_version = 0;
  if (::cudaDriverGetVersion(&s.driver_version) != cudaSuccess) s.driver_version = 0;
  if (auto nccl = load_nccl()) s.nccl_version = (*nccl)->version;
  int count = 0;
  const cudaError_t rc = ::cudaGetDeviceCount(&count);
  if (rc != cudaSuccess) {
    // Say what is missing in the words of the machine, not of the runtime.
    if (s.driver_version == 0 || rc == cudaErrorInsufficientDriver)
      s.reason = "no GPU: no NVIDIA driver is loaded on this machine";
    else if (rc == cudaErrorNoDevice)
      s.reason = "no GPU: the NVIDIA driver sees none";
    else
      s.reason = std::string{"no usable CUDA device: "} + ::cudaGetErrorString(rc);
    ::cudaGetLastError();  // clear the error so later queries start clean
    return s;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (const auto prc = ::cudaGetDeviceProperties(&prop, i); prc != cudaSuccess) {
      s.reason += fmt::format("GPU {}: {}; ", i, ::cudaGetErrorString(prc));
      continue;
    }
    s.devices.push_back({i, prop.name, prop.major, prop.minor, prop.totalGlobalMem});
  }
  if (s.devices.empty()) s.reason = "the CUDA runtime reports no devices";
  return s;
}

expected<void> axpy(float a, std::span<const float> x, std::span<float> y) {
  if (x.size() != y.size())
    return make_error(errc::invalid_argument, "axpy: x has {} elements but y has {}", x.size(), y.size());
  int count = 0;
  if (::cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    ::cudaGetLastError();
    return make_error(errc::not_found, "axpy_cuda: no CUDA device present");
  }
  const std::size_t n = x.size();
  if (n == 0) return {};
  FLEXSP_TRY_ASSIGN(auto dx, device_buffer<float>::allocate(n));
  FLEXSP_TRY_ASSIGN(auto dy, device_buffer<float>::allocate(n));
  FLEXSP_CUDA_CHECK(::cudaMemcpy(dx.data(), x.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  FLEXSP_CUDA_CHECK(::cudaMemcpy(dy.data(), y.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  FLEXSP_CUDA_CHECK(launch_axpy(a, dx.data(), dy.data(), n, nullptr));
  FLEXSP_CUDA_CHECK(::cudaMemcpy(y.data(), dy.data(), n * sizeof(float), cudaMemcpyDeviceToHost));
  return {};
}

}  // namespace flexsp::kernels::cuda
