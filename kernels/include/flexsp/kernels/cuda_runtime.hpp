#pragma once
/// \file
/// What the CUDA backend can do on this machine. The only entry point that tells whether the
/// CUDA path was compiled in and whether a GPU is present; callers never test macros.

#include <span>
#include <string>
#include <vector>

#include "flexsp/core/error.hpp"

namespace flexsp::kernels {

/// One visible CUDA device.
struct cuda_device_info {
  int index = 0;
  std::string name;
  int compute_capability_major = 0;
  int compute_capability_minor = 0;
  std::size_t memory_bytes = 0;
};

/// The CUDA backend on this machine.
struct cuda_status {
  bool compiled = false;           ///< built with FLEXSP_ENABLE_CUDA
  int runtime_version = 0;         ///< CUDA runtime version (e.g. 13000), 0 when not compiled
  int driver_version = 0;          ///< 0 when no driver is installed
  int nccl_version = 0;            ///< NCCL_VERSION_CODE of the loaded library, 0 when absent
  std::vector<cuda_device_info> devices;  ///< empty when there is no GPU
  std::string reason;              ///< why `devices` is empty, when it is
};

/// Queries the CUDA runtime. Never fails: a missing driver or GPU is reported in `reason`.
cuda_status query_cuda();

/// y <- a*x + y on the first GPU (host buffers in and out; for build and smoke checks).
/// errc::unimplemented when CUDA is not compiled in; errc::not_found when there is no GPU;
/// errc::invalid_argument when the sizes differ.
expected<void> axpy_cuda(float a, std::span<const float> x, std::span<float> y);

/// The CPU reference of axpy_cuda.
expected<void> axpy_cpu(float a, std::span<const float> x, std::span<float> y);

}  // namespace flexsp::kernels
